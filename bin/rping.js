#!/usr/bin/env node
import { rpingCli } from '../dist/src/cli/rping.js';
await rpingCli();
