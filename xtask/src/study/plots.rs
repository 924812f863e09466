//! The study's plots, as PNG and SVG, with `plotters`: bytes per second by
//! workload and policy (four bars each), and bytes per second against the
//! sync interval (interval policies only). Text is drawn with plotters'
//! pure-Rust `ab_glyph` path from a TrueType file read at run time, so no
//! fontconfig or freetype is needed.
use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;
use sync_core::policy::PolicySpec;

use super::results::Row;
use crate::apt;

/// Debian's `fonts-dejavu-core` puts it here.
const FONT_FILE: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT: &str = "sans-serif";
/// The four ways of sending a steady state, in the order of the bars.
const KINDS: [(&str, RGBColor); 4] = [
    ("dirty pages", RGBColor(214, 96, 77)),
    ("changed bytes", RGBColor(244, 165, 130)),
    ("delta", RGBColor(67, 147, 195)),
    ("delta+zstd", RGBColor(33, 102, 172)),
];
const PANEL: (u32, u32) = (720, 340);
const HEADER: u32 = 70;
const COLUMNS: usize = 2;

/// The plots `write_all` makes: file stem and title.
pub const BYTES_PER_SECOND: (&str, &str) = ("bytes_per_second", "Bytes per second of steady state, by workload and policy");
pub const BYTES_VS_INTERVAL: (&str, &str) = ("bytes_vs_interval", "Bytes per second against the sync interval");

/// One row as plotted: bytes per second in each of the `KINDS`.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub workload: String,
    pub policy: String,
    /// The sync interval in seconds, for `interval:` policies.
    pub interval_s: Option<f64>,
    pub rates: [f64; 4],
}

pub fn points(rows: &[Row]) -> Vec<Point> {
    rows.iter()
        .map(|r| Point {
            workload: r.workload.clone(),
            policy: r.policy.clone(),
            interval_s: match PolicySpec::parse(&r.policy) {
                Ok(PolicySpec::Interval { period_ns }) => Some(period_ns as f64 / 1e9),
                _ => None,
            },
            rates: [r.dirty_page_bytes, r.changed_bytes, r.delta_bytes, r.compressed_bytes].map(|b| r.per_second(b)),
        })
        .collect()
}

/// Names in the order they first appear.
fn distinct<'a>(names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// A log axis from the decade below the smallest positive value to the
/// decade above the largest; (1, 10) when there is none.
pub fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let pos: Vec<f64> = values.filter(|v| *v > 0.0 && v.is_finite()).collect();
    if pos.is_empty() {
        return (1.0, 10.0);
    }
    let min = pos.iter().copied().fold(f64::MAX, f64::min);
    let max = pos.iter().copied().fold(0.0, f64::max);
    let lo = 10f64.powf(min.log10().floor());
    let hi = 10f64.powf(max.log10().ceil());
    (lo, if hi > lo { hi } else { lo * 10.0 })
}

/// `1 kB/s`, `20 MB/s`: decimal units, as link speeds are quoted.
pub fn rate_label(v: f64) -> String {
    let (div, unit) = match v {
        v if v >= 1e9 => (1e9, "GB"),
        v if v >= 1e6 => (1e6, "MB"),
        v if v >= 1e3 => (1e3, "kB"),
        _ => (1.0, "B"),
    };
    let x = v / div;
    if (x - x.round()).abs() < 1e-9 {
        format!("{x:.0} {unit}/s")
    } else {
        format!("{x:.1} {unit}/s")
    }
}

/// A policy as an axis label: the interval or threshold alone.
pub fn short_policy(p: &str) -> &str {
    p.strip_prefix("interval:").or_else(|| p.strip_prefix("threshold:")).unwrap_or(p)
}

/// `50ms`, `1s`.
pub fn interval_label(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0}ms", s * 1000.0)
    } else {
        format!("{s}s")
    }
}

/// Reads the font (installing `fonts-dejavu-core` when it is missing) and
/// hands it to plotters, once per process.
pub fn load_font() -> Result<()> {
    static LOADED: OnceLock<()> = OnceLock::new();
    if LOADED.get().is_some() {
        return Ok(());
    }
    apt::ensure_debian_packages(&[("fonts-dejavu-core", FONT_FILE)])?;
    let bytes = std::fs::read(FONT_FILE).with_context(|| format!("reading {FONT_FILE}"))?;
    // plotters keeps fonts for the whole process ('static): one copy is
    // leaked, once (LOADED).
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, bytes).map_err(|_| anyhow!("{FONT_FILE} is not a font plotters can read"))?;
    let _ = LOADED.set(());
    Ok(())
}

/// Writes both plots as PNG and SVG into `dir`; returns the (stem, title)
/// of each written (the interval plot needs an interval policy).
pub fn write_all(dir: &Path, rows: &[Row]) -> Result<Vec<(&'static str, &'static str)>> {
    load_font()?;
    let pts = points(rows);
    let mut written = Vec::new();
    if !pts.is_empty() {
        render(dir, BYTES_PER_SECOND, grid_size(&pts), &Plot::Bars(&pts))?;
        written.push(BYTES_PER_SECOND);
    }
    let timed: Vec<Point> = pts.iter().filter(|p| p.interval_s.is_some()).cloned().collect();
    if !timed.is_empty() {
        render(dir, BYTES_VS_INTERVAL, grid_size(&timed), &Plot::Lines(&timed))?;
        written.push(BYTES_VS_INTERVAL);
    }
    Ok(written)
}

fn grid_size(pts: &[Point]) -> (u32, u32) {
    let n = distinct(pts.iter().map(|p| p.workload.as_str())).len();
    let rows = n.div_ceil(COLUMNS).max(1) as u32;
    (PANEL.0 * COLUMNS as u32, HEADER + rows * PANEL.1)
}

/// What a plot shows (one drawing routine for both backends).
enum Plot<'a> {
    Bars(&'a [Point]),
    Lines(&'a [Point]),
}

fn draw_on<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, plot: &Plot) -> Result<()> {
    match plot {
        Plot::Bars(p) => bars(root, p),
        Plot::Lines(p) => lines(root, p),
    }
}

/// Draws one plot as `<stem>.png` and `<stem>.svg`.
fn render(dir: &Path, (stem, _): (&str, &str), size: (u32, u32), plot: &Plot) -> Result<()> {
    let png = dir.join(format!("{stem}.png"));
    let root = BitMapBackend::new(&png, size).into_drawing_area();
    draw_on(&root, plot).with_context(|| format!("drawing {}", png.display()))?;
    root.present().map_err(|e| anyhow!("writing {}: {e}", png.display()))?;
    let svg = dir.join(format!("{stem}.svg"));
    let root = SVGBackend::new(&svg, size).into_drawing_area();
    draw_on(&root, plot).with_context(|| format!("drawing {}", svg.display()))?;
    root.present().map_err(|e| anyhow!("writing {}: {e}", svg.display()))?;
    Ok(())
}

/// The plotters error of any backend, as text (its error types differ).
fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("{e}")
}

/// White background, the title and the legend of the four kinds on top;
/// returns one drawing area per workload panel.
fn frame<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, panels: usize) -> Result<Vec<DrawingArea<DB, Shift>>> {
    root.fill(&WHITE).map_err(err)?;
    let (head, body) = root.split_vertically(HEADER);
    head.draw_text(title, &(FONT, 22).into_text_style(&head), (16, 10)).map_err(err)?;
    for (i, (name, color)) in KINDS.iter().enumerate() {
        let x = 16 + i as i32 * 170;
        head.draw(&Rectangle::new([(x, 44), (x + 14, 58)], color.filled())).map_err(err)?;
        head.draw_text(name, &(FONT, 15).into_text_style(&head), (x + 20, 43)).map_err(err)?;
    }
    let rows = panels.div_ceil(COLUMNS).max(1);
    Ok(body.split_evenly((rows, COLUMNS)))
}

/// An axis of `n` categories on 0..n, a tick and label at each centre
/// (plotters' `with_key_points` loses the f64 label formatter).
struct Categories(usize);

impl Ranged for Categories {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;
    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        limit.0 + ((limit.1 - limit.0) as f64 * v / self.0.max(1) as f64).round() as i32
    }
    fn key_points<H: KeyPointHint>(&self, _: H) -> Vec<f64> {
        (0..self.0).map(|i| i as f64 + 0.5).collect()
    }
    fn range(&self) -> Range<f64> {
        0.0..self.0 as f64
    }
}

/// Bytes per second, one panel per workload, four bars per policy.
fn bars<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, pts: &[Point]) -> Result<()> {
    let workloads = distinct(pts.iter().map(|p| p.workload.as_str()));
    let policies = distinct(pts.iter().map(|p| p.policy.as_str()));
    let (lo, hi) = log_range(pts.iter().flat_map(|p| p.rates));
    let panels = frame(root, BYTES_PER_SECOND.1, workloads.len())?;
    for (area, w) in panels.iter().zip(&workloads) {
        let mut chart = ChartBuilder::on(area)
            .caption(*w, (FONT, 18))
            .margin(10)
            .x_label_area_size(28)
            .y_label_area_size(78)
            .build_cartesian_2d(Categories(policies.len()), (lo..hi).log_scale())
            .map_err(err)?;
        let x_label = |x: &f64| policies.get(x.floor() as usize).map(|p| short_policy(p).to_string()).unwrap_or_default();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&x_label)
            .y_label_formatter(&|y| rate_label(*y))
            .label_style((FONT, 13))
            .draw()
            .map_err(err)?;
        let mut rects = Vec::new();
        for p in pts.iter().filter(|p| p.workload == *w) {
            let Some(i) = policies.iter().position(|q| *q == p.policy) else { continue };
            for (k, (_, color)) in KINDS.iter().enumerate() {
                let x0 = i as f64 + 0.1 + k as f64 * 0.2;
                rects.push(Rectangle::new([(x0, lo), (x0 + 0.18, p.rates[k].max(lo))], color.filled()));
            }
        }
        chart.draw_series(rects).map_err(err)?;
    }
    Ok(())
}

/// Bytes per second against the interval, one panel per workload, a line
/// for each of the four kinds.
fn lines<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, pts: &[Point]) -> Result<()> {
    let workloads = distinct(pts.iter().map(|p| p.workload.as_str()));
    let (lo, hi) = log_range(pts.iter().flat_map(|p| p.rates));
    let mut intervals: Vec<f64> = pts.iter().filter_map(|p| p.interval_s).collect();
    intervals.sort_by(f64::total_cmp);
    intervals.dedup();
    let (first, last) = match (intervals.first(), intervals.last()) {
        (Some(a), Some(b)) => (*a, *b),
        _ => return Ok(()),
    };
    let panels = frame(root, BYTES_VS_INTERVAL.1, workloads.len())?;
    for (area, w) in panels.iter().zip(&workloads) {
        let mut chart = ChartBuilder::on(area)
            .caption(*w, (FONT, 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(78)
            .build_cartesian_2d((first / 1.5..last * 1.5).log_scale().with_key_points(intervals.clone()), (lo..hi).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_label_formatter(&|x| interval_label(*x))
            .y_label_formatter(&|y| rate_label(*y))
            .x_desc("sync interval")
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 13))
            .draw()
            .map_err(err)?;
        let mut mine: Vec<&Point> = pts.iter().filter(|p| p.workload == *w).collect();
        mine.sort_by(|a, b| a.interval_s.unwrap_or(0.0).total_cmp(&b.interval_s.unwrap_or(0.0)));
        for (k, (_, color)) in KINDS.iter().enumerate() {
            let xy: Vec<(f64, f64)> = mine.iter().filter_map(|p| Some((p.interval_s?, p.rates[k].max(lo)))).collect();
            chart.draw_series(LineSeries::new(xy.clone(), color.stroke_width(2))).map_err(err)?;
            chart.draw_series(xy.into_iter().map(|c| Circle::new(c, 4, color.filled()))).map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(workload: &str, policy: &str) -> Row {
        Row {
            workload: workload.into(),
            policy: policy.into(),
            shadow: 25,
            seconds: 2.0,
            epochs: 3,
            dirty_pages: 10,
            dirty_page_bytes: 40960,
            changed_bytes: 4000,
            delta_bytes: 4400,
            compressed_bytes: 1000,
            wire_bytes: 1100,
            write_faults: 12,
            pause_us_median: 100,
            pause_us_max: 200,
            progress_rate: None,
            disk: None,
        }
    }

    #[test]
    fn points_are_per_second_with_the_interval() {
        let p = points(&[row("dav1d", "interval:200ms"), row("dav1d", "switch-only")]);
        assert_eq!(p[0].rates, [20480.0, 2000.0, 2200.0, 500.0]);
        assert_eq!(p[0].interval_s, Some(0.2));
        assert_eq!(p[1].interval_s, None);
    }

    #[test]
    fn log_range_spans_whole_decades() {
        assert_eq!(log_range([500.0, 20480.0, 0.0].into_iter()), (100.0, 100_000.0));
        assert_eq!(log_range([1000.0].into_iter()), (1000.0, 10_000.0));
        assert_eq!(log_range(std::iter::empty()), (1.0, 10.0));
    }

    #[test]
    fn labels() {
        assert_eq!(rate_label(1e6), "1 MB/s");
        assert_eq!(rate_label(2.5e3), "2.5 kB/s");
        assert_eq!(rate_label(100.0), "100 B/s");
        assert_eq!(short_policy("interval:50ms"), "50ms");
        assert_eq!(short_policy("threshold:4MiB"), "4MiB");
        assert_eq!(short_policy("switch-only"), "switch-only");
        assert_eq!(interval_label(0.05), "50ms");
        assert_eq!(interval_label(5.0), "5s");
        assert_eq!(distinct(["a", "b", "a", "c"].into_iter()), ["a", "b", "c"]);
    }
}
