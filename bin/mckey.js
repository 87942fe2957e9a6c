#!/usr/bin/env node
import { mckeyCli } from '../dist/src/cli/mckey.js';
await mckeyCli();
