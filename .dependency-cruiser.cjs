// Dependency rules for `npm run lint` (issue 11): imports point one way,
//   cli, bench -> cm, lag -> verbs -> roce/transport -> roce/link, roce/wire (+ opcode, psn, icrc, gid, ...) -> native
// and nothing imports in a circle. Run on the TypeScript sources (tsConfig below), not on dist/, and with
// type-only imports counted: a type that one layer borrows from the layer above it is still a dependency
// pointing the wrong way (it is how the roce <-> verbs cycle started).
//
// Layers, as path patterns (relative to the repository root):
const VERBS = '^src/verbs/';
const CM_LAG = '^src/(cm|lag)/';
const CLI = '^src/cli/';
const TRANSPORT = '^src/roce/transport/';
const LINK = '^src/roce/link/';
// The wire layer: the header views under src/roce/wire and the packet-level modules beside them
// (opcode, psn, icrc, gid, aeth, packet, framing, pcap, dump, counters, and the ./wire package entry).
const WIRE = '^src/roce/(wire/|[^/]+\\.ts$)';
const NATIVE = '^src/native\\.ts$';

/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      severity: 'error',
      comment: 'Import cycles make the layers meaningless and the load order fragile; break the cycle with an interface the lower module declares.',
      from: { path: '^(src|bench|test|scripts)/' },
      // A cycle counts when it is one at run time: every import in it loads code. A cycle made with
      // `import type` somewhere in it is erased by tsc and orders nothing; a type-only import that points
      // to a higher layer is still caught by the layer rules below, which count type-only imports.
      to: { circular: true, viaOnly: { dependencyTypesNot: ['type-only'] } },
    },
    {
      name: 'no-circular-type-only',
      // A warning (printed, does not fail the build): a cycle that only closes through `import type`. Inside
      // one layer that is an object model referring to itself (a Qp knows its Device, a Device makes Qps);
      // across layers the layer rules below already fail it. Make this 'error' to forbid those too.
      severity: 'warn',
      comment: 'A cycle closed by a type-only import: harmless at run time, but a sign the two modules are one.',
      from: { path: '^(src|bench|test|scripts)/' },
      to: { circular: true, via: { dependencyTypes: ['type-only'] } },
    },
    {
      name: 'roce-not-to-verbs-cm-lag',
      severity: 'error',
      comment:
        'Nothing under src/roce imports src/verbs, src/cm or src/lag: the transport declares the small interfaces it needs and the verbs objects implement them.',
      from: { path: '^src/roce/' },
      to: { path: '^src/(verbs|cm|lag)/' },
    },
    {
      name: 'link-and-wire-not-to-transport',
      severity: 'error',
      comment: 'roce/link and roce/wire (and opcode, psn, icrc, gid, ...) sit below roce/transport and must not import it.',
      from: { path: [LINK, WIRE] },
      to: { path: TRANSPORT },
    },
    {
      name: 'wire-not-to-link',
      severity: 'error',
      comment: 'Packet parsing and building is pure: it must not depend on sockets or the in-memory network in roce/link.',
      from: { path: WIRE },
      to: { path: LINK },
    },
    {
      name: 'native-is-the-bottom',
      severity: 'error',
      comment: 'src/native.ts (the addon loader) is the lowest layer: it imports nothing of ours.',
      from: { path: NATIVE },
      to: { path: '^(src|bench|test|scripts)/' },
    },
    {
      name: 'verbs-not-up',
      severity: 'error',
      comment: 'verbs sits below cm, lag and the CLIs and must not import them.',
      from: { path: VERBS },
      to: { path: [CM_LAG, CLI, '^src/index\\.ts$'] },
    },
    {
      name: 'cm-lag-not-to-cli',
      severity: 'error',
      comment: 'rdma_cm and LAG are libraries under the CLIs and must not import them.',
      from: { path: CM_LAG },
      to: { path: [CLI, '^src/index\\.ts$'] },
    },
    {
      name: 'src-not-to-test-or-bench',
      severity: 'error',
      comment: 'The shipped code (package.json "files": dist/src) must not import tests or benchmarks.',
      from: { path: '^src/' },
      to: { path: '^(test|bench)/' },
    },
    {
      name: 'not-to-unresolvable',
      severity: 'error',
      comment: 'An import that does not resolve (a typo or a moved file) is caught here as well as by tsc.',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|build|native/build|node_modules|bench/out)/' },
    tsConfig: { fileName: 'tsconfig.json' },
    tsPreCompilationDeps: true,
    // Node's own modules (node:dgram, ...) are leaves; nothing to check there.
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      extensions: ['.ts', '.js', '.d.ts'],
    },
    reporterOptions: {
      text: { highlightFocused: true },
    },
  },
};
