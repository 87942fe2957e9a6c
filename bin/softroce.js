#!/usr/bin/env node
import '../dist/src/cli/softroce.js';
