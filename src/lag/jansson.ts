/**
 * The JSON that teamd reads and teamdctl prints, as jansson handles it: teamd loads its config with
 * `json_loads(text, JSON_REJECT_DUPLICATES)` (teamd/teamd_config.c, teamd_config_load) and every dump
 * goes through `json_dumps(j, JSON_INDENT(4) | JSON_ENSURE_ASCII | JSON_SORT_KEYS)` (teamd/teamd_json.h
 * TEAMD_JSON_DUMPS_FLAGS; utils/teamdctl.c __jsondump reloads the reply and dumps it again with the same
 * flags, indent 0 with `--oneline`). JSON.parse cannot be used as is: it keeps the last of two equal keys
 * where jansson refuses the document, and it turns `1.0` into an integer where jansson keeps a real
 * (and teamd's `teamd_config_int_get` then refuses it: `json_is_integer` is false).
 *
 * Objects are Maps (no prototype keys, insertion order kept until the dump sorts them), reals are boxed in
 * JsonReal so that a dump prints them as jansson does ("%.17g", ".0" appended).
 */

/** A JSON real (a number written with a fraction or an exponent), as jansson's json_real. */
export class JsonReal {
  readonly value: number;
  constructor(value: number) {
    this.value = value;
  }
}

export type JsonValue = null | boolean | number | string | JsonReal | JsonValue[] | JsonObject;
export type JsonObject = Map<string, JsonValue>;

/** A syntax error, with the path of the value being read (same syntax as TeamConfigError's). */
export class JsonSyntaxError extends Error {
  readonly path: string;
  readonly reason: string;
  constructor(path: string, reason: string) {
    super(`${path === '' ? '(root)' : path}: ${reason}`);
    this.name = 'JsonSyntaxError';
    this.path = path;
    this.reason = reason;
  }
}

export function isJsonObject(v: JsonValue | undefined): v is JsonObject {
  return v instanceof Map;
}

/** `path` + `.key`, the way TeamConfigError names a place ("runner.tx_hash[2]"). */
export function childPath(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  return path === '' ? key : `${path}.${key}`;
}

const WS = new Set([0x20, 0x09, 0x0a, 0x0d]);

/**
 * Parses `text` as jansson's json_loads(JSON_REJECT_DUPLICATES) does: the top level must be an object or
 * an array (no JSON_DECODE_ANY), duplicate keys are refused, integers must fit json_int_t (here: exact in a
 * double, 2^53, so that a dump reprints them unchanged), strings must be valid Unicode.
 */
export function parseJson(text: string): JsonValue {
  let i = 0;
  let line = 1;
  let lineStart = 0;
  const where = (): string => `line ${line}, column ${i - lineStart + 1}`;
  const fail = (path: string, what: string): never => {
    throw new JsonSyntaxError(path, `${what} (${where()})`);
  };
  const skipWs = (): void => {
    while (i < text.length && WS.has(text.charCodeAt(i))) {
      if (text.charCodeAt(i) === 0x0a) {
        line++;
        lineStart = i + 1;
      }
      i++;
    }
  };
  const readString = (path: string): string => {
    // text[i] is the opening quote
    i++;
    let out = '';
    for (;;) {
      if (i >= text.length) fail(path, 'premature end of input in a string');
      const c = text.charCodeAt(i);
      if (c === 0x22) {
        i++;
        break;
      }
      if (c < 0x20) fail(path, 'control character in a string');
      if (c !== 0x5c) {
        if (c >= 0xd800 && c <= 0xdbff) {
          const d = text.charCodeAt(i + 1);
          if (!(d >= 0xdc00 && d <= 0xdfff)) fail(path, 'invalid Unicode in a string');
          out += text.slice(i, i + 2);
          i += 2;
          continue;
        }
        if (c >= 0xdc00 && c <= 0xdfff) fail(path, 'invalid Unicode in a string');
        out += text[i];
        i++;
        continue;
      }
      const e = text[i + 1];
      i += 2;
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          const hex = (at: number): number => {
            const h = text.slice(at, at + 4);
            if (!/^[0-9a-fA-F]{4}$/.test(h)) fail(path, 'invalid \\u escape');
            return parseInt(h, 16);
          };
          const u = hex(i);
          i += 4;
          if (u === 0) fail(path, '\\u0000 is not allowed'); // no JSON_ALLOW_NUL
          if (u >= 0xd800 && u <= 0xdbff) {
            if (text[i] !== '\\' || text[i + 1] !== 'u') fail(path, 'invalid Unicode: lone surrogate');
            const l = hex(i + 2);
            if (!(l >= 0xdc00 && l <= 0xdfff)) fail(path, 'invalid Unicode: lone surrogate');
            i += 6;
            out += String.fromCharCode(u, l);
          } else if (u >= 0xdc00 && u <= 0xdfff) {
            fail(path, 'invalid Unicode: lone surrogate');
          } else out += String.fromCharCode(u);
          break;
        }
        default:
          fail(path, 'invalid escape in a string');
      }
    }
    return out;
  };
  const readValue = (path: string, depth: number): JsonValue => {
    skipWs();
    if (depth > 2048) fail(path, 'maximum nesting depth reached'); // jansson's JSON_PARSER_MAX_DEPTH
    const c = text[i];
    if (c === '{') {
      i++;
      const obj: JsonObject = new Map();
      skipWs();
      if (text[i] === '}') {
        i++;
        return obj;
      }
      for (;;) {
        skipWs();
        if (text[i] !== '"') fail(path, "string or '}' expected");
        const key = readString(path);
        if (obj.has(key)) fail(path, `duplicate object key "${key}"`);
        skipWs();
        if (text[i] !== ':') fail(childPath(path, key), "':' expected");
        i++;
        obj.set(key, readValue(childPath(path, key), depth + 1));
        skipWs();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return obj;
        }
        fail(path, "'}' expected");
      }
    }
    if (c === '[') {
      i++;
      const arr: JsonValue[] = [];
      skipWs();
      if (text[i] === ']') {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(readValue(childPath(path, arr.length), depth + 1));
        skipWs();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return arr;
        }
        fail(path, "']' expected");
      }
    }
    if (c === '"') return readString(path);
    for (const [word, value] of [
      ['true', true],
      ['false', false],
      ['null', null],
    ] as const) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return value;
      }
    }
    const m = /^-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/.exec(text.slice(i, i + 400));
    if (m === null) fail(path, i >= text.length ? 'premature end of input' : 'invalid token');
    const tok = m![0];
    i += tok.length;
    if (m![1] !== undefined || m![2] !== undefined) {
      const r = Number(tok);
      if (!Number.isFinite(r)) fail(path, 'real number overflow');
      return new JsonReal(r);
    }
    const n = Number(tok);
    if (!Number.isSafeInteger(n)) fail(path, 'integer too big (beyond 2^53)');
    return n === 0 ? 0 : n; // -0 is integer 0 for jansson
  };
  skipWs();
  if (text[i] !== '{' && text[i] !== '[') fail('', "'[' or '{' expected");
  const v = readValue('', 0);
  skipWs();
  if (i < text.length) fail('', 'end of file expected');
  return v;
}

/**
 * Converts a JS value (what JSON.parse or a literal gives) into the tree; `undefined` members, functions,
 * symbols, bigints and non-finite numbers are not JSON and are refused with the path. Non-integral numbers
 * become reals; integral ones integers (a JS value cannot tell 1 from 1.0).
 */
export function fromPlain(v: unknown, path: string, seen: Set<object> = new Set()): JsonValue {
  if (v === null || typeof v === 'boolean') return v;
  if (typeof v === 'string') {
    if (/[\uD800-\uDFFF]/u.test(v)) throw new JsonSyntaxError(path, 'invalid Unicode in a string');
    if (v.includes('\u0000')) throw new JsonSyntaxError(path, '\\u0000 is not allowed');
    return v;
  }
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new JsonSyntaxError(path, `${String(v)} is not a JSON number`);
    if (Number.isInteger(v)) {
      if (!Number.isSafeInteger(v)) throw new JsonSyntaxError(path, 'integer too big (beyond 2^53)');
      return v === 0 ? 0 : v;
    }
    return new JsonReal(v);
  }
  if (v instanceof JsonReal) return v;
  if (typeof v === 'object') {
    if (seen.has(v)) throw new JsonSyntaxError(path, 'circular structure');
    seen.add(v);
    try {
      if (Array.isArray(v)) return v.map((e, k) => fromPlain(e as unknown, childPath(path, k), seen));
      const obj: JsonObject = new Map();
      const entries = v instanceof Map ? [...(v as Map<unknown, unknown>)] : Object.entries(v);
      for (const [k, e] of entries) {
        if (typeof k !== 'string') throw new JsonSyntaxError(path, 'object keys must be strings');
        if (e === undefined) continue; // as JSON.stringify: an undefined member is absent
        obj.set(k, fromPlain(e, childPath(path, k), seen));
      }
      return obj;
    } finally {
      seen.delete(v);
    }
  }
  throw new JsonSyntaxError(path, `a ${typeof v} is not JSON`);
}

/** A deep copy (json_deep_copy). */
export function deepCopy(v: JsonValue): JsonValue {
  if (Array.isArray(v)) return v.map(deepCopy);
  if (isJsonObject(v)) return new Map([...v].map(([k, e]) => [k, deepCopy(e)]));
  return v;
}

/** The tree as plain JS values (objects built with Object.fromEntries, so "__proto__" stays an own key). */
export function toPlain(v: JsonValue): unknown {
  if (v instanceof JsonReal) return v.value;
  if (Array.isArray(v)) return v.map(toPlain);
  if (isJsonObject(v)) return Object.fromEntries([...v].map(([k, e]) => [k, toPlain(e)]));
  return v;
}

/** jansson's "%.17g" for reals, then its clean-ups: ".0" when it looks like an integer, no '+' or leading zeros in the exponent. */
export function formatReal(x: number): string {
  let s: string;
  if (x === 0) s = Object.is(x, -0) ? '-0' : '0';
  else {
    const [mant = '', expStr = '0'] = x.toExponential(16).split('e');
    const exp = Number(expStr);
    if (exp < -4 || exp >= 17) {
      const m = mant.includes('.') ? mant.replace(/0+$/, '').replace(/\.$/, '') : mant;
      s = `${m}e${exp}`; // Number() already drops '+' and leading zeros, as jansson does
    } else {
      s = x.toFixed(16 - exp);
      if (s.includes('.')) s = s.replace(/0+$/, '').replace(/\.$/, '');
    }
  }
  if (!/[.e]/.test(s)) s += '.0';
  return s;
}

/** A string as jansson dumps it with JSON_ENSURE_ASCII: short escapes, else \uXXXX in upper-case hex. */
export function formatString(s: string): string {
  let out = '"';
  for (let k = 0; k < s.length; k++) {
    const c = s.charCodeAt(k);
    if (c === 0x22) out += '\\"';
    else if (c === 0x5c) out += '\\\\';
    else if (c === 0x08) out += '\\b';
    else if (c === 0x0c) out += '\\f';
    else if (c === 0x0a) out += '\\n';
    else if (c === 0x0d) out += '\\r';
    else if (c === 0x09) out += '\\t';
    else if (c < 0x20 || c > 0x7f) out += `\\u${c.toString(16).toUpperCase().padStart(4, '0')}`;
    else out += s[k];
  }
  return out + '"';
}

/** JSON_SORT_KEYS: jansson sorts with strcmp, i.e. on the UTF-8 bytes, not on UTF-16 code units. */
function byUtf8(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/**
 * json_dumps(v, JSON_INDENT(indent) | JSON_ENSURE_ASCII | JSON_SORT_KEYS), jansson's dump.c layout: with an
 * indent, every member on its own line and ": " between key and value; with indent 0, ", " and ": " on one
 * line; "{}" and "[]" when empty.
 */
export function dumpJson(v: JsonValue, indent: number): string {
  const nl = (depth: number, space: boolean): string => (indent > 0 ? '\n' + ' '.repeat(indent * depth) : space ? ' ' : '');
  const dump = (x: JsonValue, depth: number): string => {
    if (x === null) return 'null';
    if (typeof x === 'boolean') return x ? 'true' : 'false';
    if (typeof x === 'number') return String(x);
    if (typeof x === 'string') return formatString(x);
    if (x instanceof JsonReal) return formatReal(x.value);
    if (Array.isArray(x)) {
      if (x.length === 0) return '[]';
      let s = '[' + nl(depth + 1, false);
      x.forEach((e, k) => {
        if (k > 0) s += ',' + nl(depth + 1, true);
        s += dump(e, depth + 1);
      });
      return s + nl(depth, false) + ']';
    }
    if (x.size === 0) return '{}';
    const keys = [...x.keys()].sort(byUtf8);
    let s = '{' + nl(depth + 1, false);
    keys.forEach((k, n) => {
      if (n > 0) s += ',' + nl(depth + 1, true);
      s += formatString(k) + ': ' + dump(x.get(k) ?? null, depth + 1);
    });
    return s + nl(depth, false) + '}';
  };
  return dump(v, 0);
}
