/**
 * perf.bench.ts's plot (issue 15 item 4): two Vega-Lite panels, bandwidth (MB/s) and latency (us)
 * against message size, both axes log-scale with ticks and grids, the legends outside the plot
 * areas, and the same-run baselines as labelled dashed reference lines. Rendered to SVG in Node by
 * Vega's headless view (renderer 'none': no canvas, no native dependency).
 */
import * as vega from 'vega';
import * as vegaLite from 'vega-lite';
import type { TopLevelSpec } from 'vega-lite';

export interface PlotPoint {
  /** the tool, e.g. ib_write_bw */
  series: string;
  /** 'event' or 'busy-poll' for the latency tools; '' for bandwidth */
  mode: string;
  size: number;
  value: number;
}

export interface PlotRef {
  label: string;
  value: number;
}

export interface PlotInput {
  bw: PlotPoint[];
  lat: PlotPoint[];
  bwRefs: PlotRef[];
  latRefs: PlotRef[];
  /** a subtitle: date, machine, quick or full */
  subtitle: string;
}

const W = 430,
  H = 320;
/** pixels between two reference labels' baselines: the label font (10 px) plus a little air */
const LABEL_GAP_PX = 13;

const ok = (v: number): boolean => Number.isFinite(v) && v > 0;

/** [lo, hi] to the 1-2-5 steps around every finite positive value, so the log axis ends on a labelled tick. */
function decades(values: number[]): [number, number] {
  const v = values.filter(ok);
  if (v.length === 0) return [1, 10];
  const steps = (x: number): number[] => {
    const d = 10 ** Math.floor(Math.log10(x));
    return [d, 2 * d, 5 * d, 10 * d];
  };
  const min = Math.min(...v),
    max = Math.max(...v);
  const lo = steps(min)
    .filter((s) => s <= min)
    .pop()!;
  const hi = steps(max).find((s) => s >= max)!;
  return hi > lo ? [lo, hi] : [lo, lo * 10];
}

/** 1, 2, 5 x 10^k inside [lo, hi]: labelled ticks on a log axis that spans a few decades. */
function ticks125(lo: number, hi: number): number[] {
  const t: number[] = [];
  for (let d = 10 ** Math.floor(Math.log10(lo)); d <= hi * 1.0001; d *= 10)
    for (const m of [1, 2, 5]) if (d * m >= lo * 0.9999 && d * m <= hi * 1.0001) t.push(d * m);
  return t;
}

/**
 * Where each reference line's label goes (`at`: the text's baseline, in data units). A label sits
 * just above its line; when the next line up is closer than a label's height, it goes just below
 * its own line instead (if the room there is free), and when neither fits it is pushed up past the
 * label below it (in log space, LABEL_GAP_PX apart). Labels name their values, so a pushed one
 * still says which line it belongs to; no two overlap.
 */
export function placeLabels(refs: PlotRef[], lo: number, hi: number, heightPx = H): Array<PlotRef & { at: number; text: string }> {
  const gap = LABEL_GAP_PX * ((Math.log10(hi) - Math.log10(lo)) / heightPx);
  const sorted = refs.filter((r) => ok(r.value)).sort((a, b) => a.value - b.value);
  let free = Math.log10(lo); // everything below this is taken (by the axis or a lower label)
  return sorted.map((r, i) => {
    const v = Math.log10(r.value);
    const next = i + 1 < sorted.length ? Math.log10(sorted[i + 1]!.value) : Infinity;
    const at = next - v < gap && v - gap >= free ? v - gap : Math.max(v, free);
    free = at + gap;
    return { ...r, at: 10 ** at, text: `${r.label}: ${r.value >= 100 ? r.value.toFixed(0) : r.value.toFixed(1)}` };
  });
}

const SIZE_LABEL = "datum.value >= 1048576 ? datum.value / 1048576 + ' MiB' : datum.value >= 1024 ? datum.value / 1024 + ' KiB' : datum.value + ' B'";

function panel(title: string, unit: string, pts: PlotPoint[], refs: PlotRef[], sizes: number[]): Record<string, unknown> {
  const [ylo, yhi] = decades([...pts.map((p) => p.value), ...refs.map((r) => r.value)]);
  const xs = sizes.length > 0 ? sizes : [1, 2];
  const xlo = Math.min(...xs),
    xhi = Math.max(...xs);
  const x = {
    field: 'size',
    type: 'quantitative',
    title: 'message size (log scale)',
    scale: { type: 'log', base: 2, domain: [xlo, xhi] },
    axis: { values: xs, labelExpr: SIZE_LABEL, grid: true, tickCount: xs.length },
  };
  const y = {
    field: 'value',
    type: 'quantitative',
    title: `${unit} (log scale)`,
    scale: { type: 'log', domain: [ylo, yhi] },
    axis: { values: ticks125(ylo, yhi), grid: true, format: '~g' },
  };
  const labels = placeLabels(refs, ylo, yhi);
  // The modes measured (busy-poll only where the tools take --busy_poll): the legend lists what is drawn.
  const modes = ['event', 'busy-poll'].filter((m) => pts.some((p) => p.mode === m));
  const hasModes = modes.length > 0;
  return {
    title: { text: title, offset: 12 },
    width: W,
    height: H,
    layer: [
      {
        data: { values: labels },
        mark: { type: 'rule', strokeDash: [4, 3], color: '#777', strokeWidth: 1 },
        encoding: { y: { field: 'value', type: 'quantitative', scale: y.scale } },
      },
      {
        data: { values: labels },
        mark: { type: 'text', align: 'left', baseline: 'bottom', dx: 4, dy: -1, fontSize: 10, color: '#444' },
        encoding: {
          x: { datum: xlo, type: 'quantitative', scale: x.scale },
          y: { field: 'at', type: 'quantitative', scale: y.scale },
          text: { field: 'text' },
        },
      },
      {
        data: { values: pts.filter((p) => ok(p.value)) },
        // Points as a layer of their own: a line mark with point: true makes Vega-Lite draw its
        // strokeDash legend's symbols with a transparent stroke (no dash to see).
        mark: { type: 'line', strokeWidth: 2 },
        encoding: {
          x,
          y,
          color: { field: 'series', type: 'nominal', title: 'softroce', legend: { orient: 'right' } },
          ...(hasModes
            ? {
                strokeDash: {
                  field: 'mode',
                  type: 'nominal',
                  title: 'mode',
                  // event solid, busy-poll dashed; the legend draws line strokes, not dots, so the two are told apart there too
                  scale: { domain: modes, range: modes.map((m) => (m === 'event' ? [1, 0] : [6, 3])) },
                  legend: { orient: 'right', symbolType: 'stroke', symbolStrokeColor: '#333', symbolStrokeWidth: 2, symbolSize: 300 },
                },
              }
            : {}),
          detail: { field: 'mode' },
        },
      },
      {
        data: { values: pts.filter((p) => ok(p.value)) },
        mark: { type: 'point', filled: true, size: 40 },
        encoding: { x, y, color: { field: 'series', type: 'nominal' } },
      },
    ],
  };
}

/** The SVG of the two panels. */
export async function renderPlot(p: PlotInput): Promise<string> {
  const sizesOf = (pts: PlotPoint[]): number[] => [...new Set(pts.map((q) => q.size))].sort((a, b) => a - b);
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'softroce perftest tools against same-run baselines (two processes, loopback)', subtitle: p.subtitle },
    background: 'white',
    padding: 10,
    hconcat: [
      panel('Bandwidth (BW average), MB/s', 'MB/s', p.bw, p.bwRefs, sizesOf(p.bw)),
      panel('Latency (average), us', 'us', p.lat, p.latRefs, sizesOf(p.lat)),
    ],
    resolve: { scale: { color: 'independent', strokeDash: 'independent' }, legend: { color: 'independent', strokeDash: 'independent' } },
    config: { font: 'sans-serif', axis: { labelFontSize: 10, titleFontSize: 11 }, legend: { labelLimit: 0 } },
  } as unknown as TopLevelSpec;
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  return svg + '\n';
}
