#!/usr/bin/env node
import { ucmatoseCli } from '../dist/src/cli/ucmatose.js';
await ucmatoseCli();
