#!/usr/bin/env node
import { pingpongMain } from '../dist/src/cli/pingpong.js';
await pingpongMain('srq');
