/** The resolve hook of bond-open.ts: the CLI tools' import of ../verbs/device.js goes to bond-device.js. */
interface Resolved {
  url: string;
  shortCircuit?: boolean;
}
type Next = (specifier: string, context: { parentURL?: string }) => Promise<Resolved>;

const SHIM = new URL('./bond-device.js', import.meta.url).href;

export async function resolve(specifier: string, context: { parentURL?: string }, next: Next): Promise<Resolved> {
  if (specifier === '../verbs/device.js' && context.parentURL !== undefined && /\/src\/cli\/(pingpong|perftest|devtools)\.js$/.test(context.parentURL))
    return { url: SHIM, shortCircuit: true };
  return next(specifier, context);
}
