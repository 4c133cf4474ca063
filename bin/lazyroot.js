#!/usr/bin/env node
// `run --lazy` with a warm standby waiting is handed to it whole (few modules loaded here);
// everything else, and that when it cannot be handed over, is the full CLI.
import { tryRunHandoff } from '../dist/src/cli/run-handoff-client.js';

const handedOver = await tryRunHandoff(process.argv);
if (handedOver === undefined) {
  const { main } = await import('../dist/src/cli/main.js');
  await main(process.argv);
} else {
  process.exitCode = handedOver;
}
