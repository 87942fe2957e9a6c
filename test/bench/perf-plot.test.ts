/**
 * bench/perf-plot.ts (issue 15 item 4): the plot's faults that the hand-drawn SVG had, as checks on
 * the rendered Vega-Lite SVG. Its baseline labels printed over each other (they were stacked 10 px
 * apart whatever the lines' distance), its axes showed only the maximum (no ticks or grid), and its
 * legend sat inside the plot on the TCP line. Nothing here sends traffic.
 */
import t from 'tap';
import { placeLabels, renderPlot, type PlotPoint } from '../../bench/perf-plot.js';

const H = 320; // the panels' height in perf-plot.ts
const px = (a: number, b: number, lo: number, hi: number): number => (Math.abs(Math.log10(a) - Math.log10(b)) / (Math.log10(hi) - Math.log10(lo))) * H;

t.test('reference labels never overlap, even for lines a few pixels apart', async (t) => {
  // Node TCP 740 and C sendmmsg 900 in one real run: 8 px apart on a 2..5000 MB/s axis.
  const refs = [
    { label: 'Node TCP', value: 740 },
    { label: 'C sendmmsg', value: 900 },
    { label: 'Node dgram', value: 156 },
    { label: 'C GSO+GRO', value: 3495 },
    { label: 'not measured', value: NaN },
  ];
  const lo = 2,
    hi = 5000;
  const placed = placeLabels(refs, lo, hi);
  t.equal(placed.length, 4, 'a baseline not measured (NaN) gets no label');
  for (let i = 1; i < placed.length; i++)
    t.ok(px(placed[i]!.at, placed[i - 1]!.at, lo, hi) >= 12.9, `${placed[i - 1]!.label} and ${placed[i]!.label}: a label's height apart`);
  for (const p of placed) {
    t.ok(px(p.at, p.value, lo, hi) <= 13.1, `${p.label}'s label is next to its line`);
    t.equal(p.text, `${p.label}: ${p.value.toFixed(0)}`, 'the label names its line and value');
  }
  // Many lines in a bunch: pushed labels still keep apart, in order.
  const bunch = placeLabels(
    [100, 101, 102, 103, 104].map((v) => ({ label: `l${v}`, value: v })),
    1,
    10000,
  );
  for (let i = 1; i < bunch.length; i++) t.ok(px(bunch[i]!.at, bunch[i - 1]!.at, 1, 10000) >= 12.9, `bunch ${i}`);
});

t.test('the SVG: log axes with 1-2-5 ticks and grids, outside legends, reference lines, busy-poll series', async (t) => {
  const bw: PlotPoint[] = [];
  for (const series of ['ib_write_bw', 'ib_send_bw', 'ib_read_bw'])
    [64, 4096, 65536, 1 << 20].forEach((size, i) => bw.push({ series, mode: '', size, value: [5, 200, 430, 500][i]! }));
  const lat: PlotPoint[] = [];
  for (const series of ['ib_send_lat', 'ib_write_lat'])
    for (const mode of ['event', 'busy-poll'])
      [2, 64, 1024, 4096].forEach((size, i) => lat.push({ series, mode, size, value: (mode === 'event' ? 40 : 8) + i }));
  const svg = await renderPlot({
    bw,
    lat,
    bwRefs: [
      { label: 'Node TCP', value: 740 },
      { label: 'C sendmmsg', value: 900 },
      { label: 'C GSO+GRO', value: 3495 },
      { label: 'Node dgram', value: 156 },
    ],
    latRefs: [
      { label: 'half Node dgram RTT', value: 24.7 },
      { label: 'half C busy-poll RTT', value: 2.9 },
    ],
    subtitle: 'test',
  });
  t.match(svg, /^<svg[^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/, 'an SVG document');
  const texts = [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => m[1]!);
  for (const want of ['64 B', '4 KiB', '64 KiB', '1 MiB', '2 B', '1 KiB', '2', '5', '10', '20', '50', '100', '200', '500', '1000', '2000', '5000'])
    t.ok(texts.includes(want), `tick label ${want}`);
  t.ok(texts.includes('MB/s (log scale)') && texts.includes('us (log scale)'), 'both y axes are titled');
  t.equal(texts.filter((s) => s === 'message size (log scale)').length, 2, 'both x axes are titled');
  for (const want of ['Node TCP: 740', 'C sendmmsg: 900', 'C GSO+GRO: 3495', 'Node dgram: 156', 'half Node dgram RTT: 24.7', 'half C busy-poll RTT: 2.9'])
    t.ok(texts.includes(want), `reference label ${want}`);
  for (const want of ['ib_write_bw', 'ib_send_bw', 'ib_read_bw', 'ib_send_lat', 'ib_write_lat', 'event', 'busy-poll'])
    t.ok(texts.includes(want), `legend entry ${want}`);
  t.ok((svg.match(/role-axis-grid/g) ?? []).length >= 4, 'grid lines on both axes of both panels');
  // The legends sit right of their panel's plot area (x beyond the 430-px-wide plot).
  const legends = [...svg.matchAll(/<g class="mark-group role-legend"[^>]*><g transform="translate\(([\d.]+),/g)].map((m) => Number(m[1]));
  t.ok(legends.length >= 3, 'a color legend per panel and the mode legend');
  for (const x of legends) t.ok(x > 430, `legend at x=${x} is outside the plot area`);
  // Busy-poll is dashed, event solid.
  t.match(svg, /stroke-dasharray="6,3"/, 'the busy-poll series is drawn dashed');
});
