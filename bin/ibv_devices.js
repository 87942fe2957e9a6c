#!/usr/bin/env node
import { toolMain } from '../dist/src/cli/devtools.js';
await toolMain('ibv_devices');
