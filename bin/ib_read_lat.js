#!/usr/bin/env node
import { perftestMain } from '../dist/src/cli/perftest.js';
await perftestMain('read_lat');
