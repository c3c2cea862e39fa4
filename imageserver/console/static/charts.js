// Time-series charts of the server's history, drawn by uPlot (vendor/uPlot.esm.js, 1.6.32).
import uPlot from './vendor/uPlot.esm.js';
import { h } from './dom.js';

const HEIGHT = 170;

function readable(value) {
  if (value === null || value === undefined) return '—';
  if (value >= 1000) return `${(value / 1000).toFixed(1)}k`;
  return Number.isInteger(value) ? String(value) : value.toFixed(value < 10 ? 2 : 1);
}

export class TimeChart {
  // `series`: [{key, label, colour, dash}], keys of the history's lists.  `empty`: what to say
  // when every value is null (a chart of something this server does not have).
  constructor(parent, id, title, series, empty) {
    this.series = series;
    this.note = h('figcaption', { class: 'muted', hidden: true }, empty);
    this.element = h('figure', { class: 'chart', 'data-chart': id }, this.note);
    parent.append(this.element);
    const options = {
      title,
      width: this.width(),
      height: HEIGHT,
      scales: {
        x: { time: true },
        y: { range: (chart, min, max) => [0, max > 0 ? max * 1.15 : 1] },
      },
      axes: [{}, { size: 48, values: (chart, ticks) => ticks.map(readable) }],
      series: [
        {},
        ...series.map((one) => ({
          label: one.label,
          stroke: one.colour,
          width: 2,
          dash: one.dash,
          spanGaps: false,
          points: { show: false },
          value: (chart, value) => readable(value),
        })),
      ],
    };
    this.plot = new uPlot(options, [[], ...series.map(() => [])], this.element);
    this.onResize = () => this.plot.setSize({ width: this.width(), height: HEIGHT });
    window.addEventListener('resize', this.onResize);
  }

  width() {
    return Math.max(280, this.element.clientWidth || 280);
  }

  // The history's points: the last 15 minutes at most, so the chart spans what is known.
  update(history) {
    const values = this.series.map((one) => history[one.key]);
    this.note.hidden = values.some((list) => list.some((value) => value !== null));
    this.plot.setData([history.time, ...values]);
  }

  destroy() {
    window.removeEventListener('resize', this.onResize);
    this.plot.destroy();
  }
}
