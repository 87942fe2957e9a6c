/**
 * The IB CM MAD codec for rdma_cm. The pure part lives in the wire layer (src/roce/wire/cm-mad.ts) so that
 * `softroce dump` can decode CM MADs without importing upwards (the layer rules in .dependency-cruiser.cjs);
 * the CM protocol imports it from here.
 */
export * from '../roce/wire/cm-mad.js';
