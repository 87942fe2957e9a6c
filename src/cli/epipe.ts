/** `tool | head` closes stdout early: that is not an error for a CLI. */
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
  throw e;
});
export {};
