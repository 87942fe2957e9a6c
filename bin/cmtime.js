#!/usr/bin/env node
import { cmtimeCli } from '../dist/src/cli/cmtime.js';
await cmtimeCli();
