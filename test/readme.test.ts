/**
 * README.md's TypeScript blocks are code users copy: every ```ts block must
 * type-check against the package (with 'softroce' mapped to src/index.ts, as
 * strict as the project's own tsconfig), and every block not marked
 * ```ts no-run must run and exit 0. The verbs example binds 127.0.0.1 and
 * 127.0.0.2 (UDP 4791), the rdma_cm quick start 127.0.0.1; no other test uses those two addresses on 4791
 * (test/cm/quick.test.ts's second process does, briefly, with the same bounded retry).
 */
import t from 'tap';
import ts from 'typescript';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { pathToFileURL } from 'node:url';
import { ROOT } from './helpers.js';

interface Block {
  line: number;
  info: string;
  code: string;
}

function tsBlocks(md: string): Block[] {
  const out: Block[] = [];
  const lines = md.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const m = /^```(ts|typescript)\b(.*)$/.exec(lines[i]!);
    if (!m) continue;
    const start = i + 1;
    let j = start;
    while (j < lines.length && lines[j] !== '```') j++;
    out.push({ line: start, info: m[2]!.trim(), code: lines.slice(start, j).join('\n') + '\n' });
    i = j;
  }
  return out;
}

const blocks = tsBlocks(readFileSync(join(ROOT, 'README.md'), 'utf8'));
const dir = mkdtempSync(join(tmpdir(), 'softroce-readme-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

t.test('README has a verbs example that runs and a wire example', (t) => {
  t.ok(blocks.length >= 2, `${blocks.length} ts blocks`);
  t.ok(
    blocks.some((b) => !b.info.includes('no-run') && b.code.includes('connectQp')),
    'the verbs example is run',
  );
  t.end();
});

t.test("the README's first example is the rdma_cm quick start, and it runs", (t) => {
  const first = blocks[0]!;
  t.match(first.code, /\blisten\(/, 'listen()');
  t.match(first.code, /\bconnect\(/, 'connect()');
  t.notOk(first.info.includes('no-run'), 'it is run below');
  t.end();
});

t.test('every ts block type-checks against the package', (t) => {
  const files = blocks.map((b, i) => {
    const f = join(dir, `block${i}.mts`);
    writeFileSync(f, b.code);
    return f;
  });
  const options: ts.CompilerOptions = {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    lib: ['lib.es2022.d.ts', 'lib.esnext.disposable.d.ts'],
    types: ['node'],
    typeRoots: [join(ROOT, 'node_modules', '@types')],
    strict: true,
    noUncheckedIndexedAccess: true,
    exactOptionalPropertyTypes: true,
    noImplicitOverride: true,
    noEmit: true,
    skipLibCheck: true,
    baseUrl: ROOT,
    paths: { softroce: [join(ROOT, 'src', 'index.ts')], 'softroce/wire': [join(ROOT, 'src', 'roce', 'index.ts')] },
  };
  const program = ts.createProgram(files, options);
  const diags = ts.getPreEmitDiagnostics(program);
  for (const [i, f] of files.entries()) {
    const mine = diags.filter((d) => d.file?.fileName === f);
    const text = mine.map((d) => {
      const pos = d.file && d.start !== undefined ? d.file.getLineAndCharacterOfPosition(d.start) : undefined;
      return `README.md:${blocks[i]!.line + (pos?.line ?? 0) + 1}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`;
    });
    t.same(text, [], `block at README.md:${blocks[i]!.line} type-checks`);
  }
  // The package itself must not be what failed (a diagnostic in src/ would hide behind the blocks').
  t.same(
    diags.filter((d) => !files.includes(d.file?.fileName ?? '')).map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n')),
    [],
    'no other diagnostics',
  );
  t.end();
});

t.test('the runnable blocks run as written', (t) => {
  const dist = (p: string): string => pathToFileURL(join(ROOT, 'dist', 'src', p)).href;
  for (const [i, b] of blocks.entries()) {
    if (b.info.includes('no-run')) continue;
    const js = ts
      .transpileModule(b.code, { compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext } })
      .outputText.replace(/from 'softroce'/g, `from '${dist('index.js')}'`)
      .replace(/from 'softroce\/wire'/g, `from '${dist('roce/index.js')}'`);
    const f = join(dir, `run${i}.mjs`);
    writeFileSync(f, js);
    // Another checkout's suite on this machine may hold the port for a moment: a bounded retry on EADDRINUSE only.
    let r = spawnSync(process.execPath, [f], { encoding: 'utf8', timeout: 60_000 });
    for (let k = 0; k < 5 && r.status !== 0 && /EADDRINUSE/.test(r.stderr); k++) {
      spawnSync(process.execPath, ['-e', 'setTimeout(() => {}, 2000)']);
      r = spawnSync(process.execPath, [f], { encoding: 'utf8', timeout: 60_000 });
    }
    t.equal(r.status, 0, `block at README.md:${b.line} exits 0\n${r.stderr}`);
    if (i === 0) t.match(r.stdout, /^server got: hello over rdma_cm$/m, 'the quick start: the SEND arrived through listen() / connect()');
    if (b.code.includes('connectQp')) {
      t.match(r.stdout, /^RECV SUCCESS: "hello over RoCEv2"$/m, 'the SEND arrived');
      t.match(r.stdout, /^SEND SUCCESS$/m, 'the SEND completed');
      t.match(r.stdout, /^RDMA WRITE SUCCESS: 5000 bytes landed in b$/m, 'the WRITE landed');
    }
  }
  t.end();
});
