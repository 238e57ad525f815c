//! Line charts written as PNG files, for results people would rather look at than read (e.g.
//! `iapt bench multitenant --plot`: decode tokens/s against distinct adapters, one line per
//! method, one panel per batch size).
//!
//! Drawn here on an RGB raster with an 8×8 bitmap font and encoded by the `png` crate, so a plot
//! needs no system fonts or graphics libraries on a bare server.

use anyhow::{Context, Result};
use font8x8::{UnicodeFonts, BASIC_FONTS};
use iapt_tuners::human_count;
use std::path::Path;

/// One line: `(x, y)` points in order.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    /// An error bar's half-height at each point (e.g. a std over seeds); empty: no bars.
    pub spread: Vec<f64>,
}

/// A horizontal reference line across a panel (e.g. the bare model's speed).
#[derive(Debug, Clone)]
pub struct Level {
    pub label: String,
    pub y: f64,
}

/// One set of axes.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
    pub levels: Vec<Level>,
}

/// Panels side by side sharing axis labels and one legend; the y axis starts at 0, the x axis is
/// logarithmic (base 2) when `x_log2`, with a tick at every x a series has.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    /// A smaller line under the title (conditions of the measurement), or empty.
    pub subtitle: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log2: bool,
    pub panels: Vec<Panel>,
}

type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [40, 40, 40];
const GRID: Rgb = [225, 225, 225];
/// Colour-blind-safe (Okabe–Ito) line colours; levels are drawn dashed in the same order.
const PALETTE: [Rgb; 7] = [[0, 114, 178], [213, 94, 0], [0, 158, 115], [204, 121, 167], [230, 159, 0], [86, 180, 233], [0, 0, 0]];

const PANEL_W: usize = 600;
const PANEL_H: usize = 420;
const LEFT: usize = 80;
const RIGHT: usize = 24;
const TOP: usize = 70;
const BOTTOM: usize = 60;
const LEGEND_ROW: usize = 26;

impl Chart {
    /// The colour of the `i`-th distinct label (series first, then levels, by first appearance).
    fn colour_of(&self, label: &str) -> Rgb {
        PALETTE[self.labels().iter().position(|l| l == label).unwrap_or(0) % PALETTE.len()]
    }

    /// Every label, in order of first appearance across the panels.
    fn labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = Vec::new();
        for panel in &self.panels {
            for label in panel.series.iter().map(|s| &s.label).chain(panel.levels.iter().map(|l| &l.label)) {
                if !labels.contains(label) {
                    labels.push(label.clone());
                }
            }
        }
        labels
    }

    /// Width of one legend entry: a swatch, a gap and the longest label at scale 2.
    fn legend_slot(&self) -> usize {
        44 + 16 * self.labels().iter().map(|l| l.chars().count()).max().unwrap_or(0) + 32
    }

    fn legend_per_row(&self) -> usize {
        ((self.width() - LEFT) / self.legend_slot()).max(1)
    }

    fn legend_rows(&self) -> usize {
        self.labels().len().div_ceil(self.legend_per_row())
    }

    pub fn width(&self) -> usize {
        LEFT + self.panels.len().max(1) * PANEL_W + RIGHT
    }

    pub fn height(&self) -> usize {
        TOP + PANEL_H + BOTTOM + self.legend_rows() * LEGEND_ROW + 10
    }

    /// The pixel a data point of panel `panel` lands on (what [`Chart::render`] draws there).
    pub fn pixel_of(&self, panel: usize, x: f64, y: f64) -> (usize, usize) {
        let axes = self.axes(panel);
        (axes.px(x).round() as usize, axes.py(y).round() as usize)
    }

    fn axes(&self, panel: usize) -> Axes {
        let p = &self.panels[panel];
        let xs: Vec<f64> = p.series.iter().flat_map(|s| s.points.iter().map(|&(x, _)| x)).collect();
        let tops = p.series.iter().flat_map(|s| s.points.iter().enumerate().map(|(i, &(_, y))| y + s.spread.get(i).copied().unwrap_or(0.0)));
        let y_max = tops.chain(p.levels.iter().map(|l| l.y)).filter(|y| y.is_finite()).fold(0.0f64, f64::max);
        let step = nice_step(if y_max > 0.0 { y_max / 5.0 } else { 1.0 });
        let transform = |x: f64| if self.x_log2 { x.max(f64::MIN_POSITIVE).log2() } else { x };
        let (lo, hi) = xs.iter().map(|&x| transform(x)).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(x), hi.max(x)));
        let (lo, hi) = if lo.is_finite() && hi > lo {
            (lo, hi)
        } else if lo.is_finite() {
            (lo - 1.0, lo + 1.0)
        } else {
            (0.0, 1.0)
        };
        let pad = (hi - lo) * 0.05;
        let x0 = LEFT + panel * PANEL_W;
        Axes {
            left: x0 as f64,
            right: (x0 + PANEL_W - 30) as f64,
            top: TOP as f64,
            bottom: (TOP + PANEL_H) as f64,
            x_lo: lo - pad,
            x_hi: hi + pad,
            y_hi: (y_max / step).ceil().max(1.0) * step,
            y_step: step,
            log2: self.x_log2,
        }
    }

    /// The chart as an RGB raster, `width × height`, row-major.
    pub fn render(&self) -> Vec<u8> {
        let mut c = Canvas::new(self.width(), self.height());
        c.text_centered(self.width() / 2, 8, &self.title, 2, INK);
        c.text_centered(self.width() / 2, 28, &self.subtitle, 1, INK);
        c.text_vertical(12, TOP + PANEL_H / 2, &self.y_label, 2, INK);
        for (i, panel) in self.panels.iter().enumerate() {
            let a = self.axes(i);
            c.text_centered(((a.left + a.right) / 2.0) as usize, TOP - 24, &panel.title, 2, INK);
            // Grid and y ticks.
            let mut y = 0.0;
            while y <= a.y_hi + a.y_step * 1e-9 {
                let py = a.py(y);
                c.line((a.left, py), (a.right, py), 1.0, GRID, None);
                let label = format_tick(y, a.y_step);
                c.text(a.left as usize - 8 - 8 * label.len(), py as usize - 4, &label, 1, INK);
                y += a.y_step;
            }
            // x ticks at the series' x values, labelled where the previous label leaves room.
            let mut xs: Vec<f64> = panel.series.iter().flat_map(|s| s.points.iter().map(|&(x, _)| x)).collect();
            xs.sort_by(f64::total_cmp);
            xs.dedup();
            let mut free_from = f64::NEG_INFINITY;
            for x in xs {
                let px = a.px(x);
                c.line((px, a.bottom), (px, a.bottom + 5.0), 1.0, INK, None);
                let label = human_count(x.round().max(0.0) as usize);
                let half = 4.0 * label.len() as f64;
                if px - half >= free_from {
                    c.text_centered(px as usize, a.bottom as usize + 10, &label, 1, INK);
                    free_from = px + half + 8.0;
                }
            }
            c.line((a.left, a.top), (a.left, a.bottom), 1.5, INK, None);
            c.line((a.left, a.bottom), (a.right, a.bottom), 1.5, INK, None);
            c.text_centered(((a.left + a.right) / 2.0) as usize, a.bottom as usize + 30, &self.x_label, 2, INK);
            for level in &panel.levels {
                let py = a.py(level.y);
                c.line((a.left, py), (a.right, py), 2.0, self.colour_of(&level.label), Some(10.0));
            }
            for series in &panel.series {
                let colour = self.colour_of(&series.label);
                for pair in series.points.windows(2) {
                    c.line((a.px(pair[0].0), a.py(pair[0].1)), (a.px(pair[1].0), a.py(pair[1].1)), 2.5, colour, None);
                }
                for (&(x, y), &spread) in series.points.iter().zip(&series.spread) {
                    let (px, low, high) = (a.px(x), a.py(y - spread), a.py(y + spread));
                    c.line((px, low), (px, high), 1.5, colour, None);
                    for end in [low, high] {
                        c.line((px - 5.0, end), (px + 5.0, end), 1.5, colour, None);
                    }
                }
                for &(x, y) in &series.points {
                    c.disc(a.px(x), a.py(y), 4.5, colour);
                }
            }
        }
        // Legend: a swatch and a label per line, in rows under the panels.
        let dashed: Vec<&String> = self.panels.iter().flat_map(|p| p.levels.iter().map(|l| &l.label)).collect();
        let (per_row, slot) = (self.legend_per_row(), self.legend_slot());
        for (k, label) in self.labels().iter().enumerate() {
            let x = (LEFT + (k % per_row) * slot) as f64;
            let y = (TOP + PANEL_H + BOTTOM + (k / per_row) * LEGEND_ROW + 8) as f64;
            let dash = dashed.contains(&label).then_some(8.0);
            c.line((x, y), (x + 36.0, y), 2.5, self.colour_of(label), dash);
            c.text(x as usize + 44, y as usize - 8, label, 2, INK);
        }
        c.pixels
    }

    /// Write the chart to `path` as a PNG (through a temporary file, so a reader never sees a
    /// half-written one).
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let (w, h) = (self.width(), self.height());
        let pixels = self.render();
        let mut bytes = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut bytes, w as u32, h as u32);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().context("encoding the plot")?;
            writer.write_image_data(&pixels).context("encoding the plot")?;
        }
        iapt_assets::atomic::write_atomically(path, &bytes).with_context(|| format!("writing the plot {}", path.display()))
    }
}

/// Data-to-pixel mapping of one panel.
struct Axes {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    x_lo: f64,
    x_hi: f64,
    y_hi: f64,
    y_step: f64,
    log2: bool,
}

impl Axes {
    fn px(&self, x: f64) -> f64 {
        let x = if self.log2 { x.max(f64::MIN_POSITIVE).log2() } else { x };
        self.left + (x - self.x_lo) / (self.x_hi - self.x_lo) * (self.right - self.left)
    }

    fn py(&self, y: f64) -> f64 {
        self.bottom - y.clamp(0.0, self.y_hi) / self.y_hi * (self.bottom - self.top)
    }
}

/// The smallest 1, 2 or 5 × 10^k at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|&s| s >= raw * (1.0 - 1e-9)).unwrap_or(10.0 * magnitude)
}

fn format_tick(value: f64, step: f64) -> String {
    if step >= 1.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        let decimals = (-step.log10().floor()) as usize;
        format!("{value:.decimals$}")
    }
}

/// An RGB raster with the few primitives the charts use.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Self { width, height, pixels: WHITE.repeat(width * height) }
    }

    fn set(&mut self, x: isize, y: isize, colour: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let at = (y as usize * self.width + x as usize) * 3;
            self.pixels[at..at + 3].copy_from_slice(&colour);
        }
    }

    /// A filled disc of `radius` around `(cx, cy)`.
    fn disc(&mut self, cx: f64, cy: f64, radius: f64, colour: Rgb) {
        let r = radius.ceil() as isize;
        for dy in -r..=r {
            for dx in -r..=r {
                let (x, y) = (cx.round() as isize + dx, cy.round() as isize + dy);
                if ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt() <= radius {
                    self.set(x, y, colour);
                }
            }
        }
    }

    /// A line `width` pixels wide; `dash` = dash length (gaps as long) for a dashed one.
    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), width: f64, colour: Rgb, dash: Option<f64>) {
        let length = ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt();
        let steps = (length * 2.0).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let along = length * i as f64 / steps as f64;
            if dash.is_some_and(|d| (along / d) as usize % 2 == 1) {
                continue;
            }
            let t = i as f64 / steps as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            if width <= 1.0 {
                self.set(x.round() as isize, y.round() as isize, colour);
            } else {
                self.disc(x, y, width / 2.0, colour);
            }
        }
    }

    /// `text` with its top-left corner at `(x, y)`, each font pixel `scale` × `scale`.
    fn text(&mut self, x: usize, y: usize, text: &str, scale: usize, colour: Rgb) {
        for (along, across) in glyph_pixels(text, scale) {
            self.set((x + along) as isize, (y + across) as isize, colour);
        }
    }

    fn text_centered(&mut self, cx: usize, y: usize, text: &str, scale: usize, colour: Rgb) {
        let w = text.chars().count() * 8 * scale;
        self.text(cx.saturating_sub(w / 2), y, text, scale, colour);
    }

    /// `text` reading bottom to top, centred on `cy`, its left edge at `x`: the horizontal
    /// text turned a quarter anticlockwise (along the line -> up, down the glyph -> right).
    fn text_vertical(&mut self, x: usize, cy: usize, text: &str, scale: usize, colour: Rgb) {
        let bottom = cy + text.chars().count() * 8 * scale / 2;
        for (along, across) in glyph_pixels(text, scale) {
            self.set((x + across) as isize, bottom as isize - along as isize, colour);
        }
    }
}

/// The lit pixels of `text` set in the 8×8 font at `scale`, as (along the line, down the glyph)
/// offsets from the text's start; unknown characters draw as '?'.
fn glyph_pixels(text: &str, scale: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    text.chars().enumerate().flat_map(move |(k, ch)| {
        let glyph = BASIC_FONTS.get(ch).or_else(|| BASIC_FONTS.get('?')).unwrap_or([0; 8]);
        (0..8usize).flat_map(move |row| {
            (0..8usize)
                .filter(move |col| glyph[row] >> col & 1 == 1)
                .flat_map(move |col| (0..scale * scale).map(move |s| ((k * 8 + col) * scale + s % scale, row * scale + s / scale)))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        let series = |label: &str, ys: [f64; 4]| Series { label: label.into(), points: [1.0, 2.0, 4.0, 8.0].into_iter().zip(ys).collect(), spread: vec![] };
        Chart {
            title: "decode".into(),
            subtitle: "2 threads".into(),
            x_label: "distinct adapters".into(),
            y_label: "tokens/s".into(),
            x_log2: true,
            panels: vec![
                Panel {
                    title: "batch 8".into(),
                    series: vec![series("iapt", [120.0, 119.0, 118.0, 118.0]), series("lora", [110.0, 80.0, 75.0, 70.0])],
                    levels: vec![Level { label: "bare".into(), y: 125.0 }],
                },
                Panel { title: "batch 16".into(), series: vec![series("iapt", [190.0, 189.0, 188.0, 187.0])], levels: vec![] },
            ],
        }
    }

    /// The PNG decodes to the chart's size, and every data point's pixel has its line's colour.
    #[test]
    fn points_land_where_the_axes_put_them_in_their_line_s_colour() {
        let chart = chart();
        let dir = std::env::temp_dir().join(format!("iapt-plot-test-{}", std::process::id()));
        let path = dir.join("chart.png");
        std::fs::create_dir_all(&dir).unwrap();
        chart.write_png(&path).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((info.width as usize, info.height as usize), (chart.width(), chart.height()));
        let at = |(x, y): (usize, usize)| -> Rgb { pixels[(y * chart.width() + x) * 3..][..3].try_into().unwrap() };
        for (p, panel) in chart.panels.iter().enumerate() {
            for series in &panel.series {
                for &(x, y) in &series.points {
                    assert_eq!(at(chart.pixel_of(p, x, y)), chart.colour_of(&series.label), "{} at ({x}, {y}) in panel {p}", series.label);
                }
            }
        }
        // Higher values are drawn higher, and x doubles by equal steps on the log axis.
        let (x1, low) = chart.pixel_of(0, 1.0, 70.0);
        let (x2, high) = chart.pixel_of(0, 2.0, 120.0);
        let (x4, _) = chart.pixel_of(0, 4.0, 0.0);
        assert!(high < low);
        assert!((x4 as isize - x2 as isize - (x2 as isize - x1 as isize)).abs() <= 1);
        assert_ne!(chart.colour_of("iapt"), chart.colour_of("lora"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ticks_are_round_numbers() {
        assert_eq!(nice_step(23.0), 50.0);
        assert_eq!(nice_step(0.13), 0.2);
        assert_eq!(nice_step(100.0), 100.0);
        assert_eq!(format_tick(0.4, 0.2), "0.4");
        assert_eq!(format_tick(150.0, 50.0), "150");
    }

    /// An error bar spans mean ± spread in its line's colour, and raises the axis to fit it.
    #[test]
    fn error_bars_span_the_spread() {
        let chart = Chart {
            title: "accuracy".into(),
            subtitle: String::new(),
            x_label: "params".into(),
            y_label: "%".into(),
            x_log2: true,
            panels: vec![Panel {
                title: "t".into(),
                series: vec![Series { label: "iapt".into(), points: vec![(1e3, 60.0), (1e4, 80.0)], spread: vec![5.0, 30.0] }],
                levels: vec![],
            }],
        };
        let pixels = chart.render();
        let at = |(x, y): (usize, usize)| -> Rgb { pixels[(y * chart.width() + x) * 3..][..3].try_into().unwrap() };
        let colour = chart.colour_of("iapt");
        for (x, y) in [(1e3, 55.0), (1e3, 65.0), (1e4, 50.0), (1e4, 110.0)] {
            assert_eq!(at(chart.pixel_of(0, x, y)), colour, "bar end at ({x}, {y})");
        }
        assert_eq!(at(chart.pixel_of(0, 1e3, 75.0)), WHITE, "above the first bar");
        assert!(chart.axes(0).y_hi >= 110.0);
    }
}
