#!/usr/bin/env node
import { udaddyCli } from '../dist/src/cli/udaddy.js';
await udaddyCli();
