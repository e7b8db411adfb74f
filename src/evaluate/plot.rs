//! Charts as hand-written SVG (no plotting crate, no font files): ROC curves of several models
//! on one chart, with a log-scale FPR axis where the low-FPR region is visible, and score
//! histograms per class with threshold markers.
//!
//! The SVG uses generic font families and plain shapes, so browsers, `rsvg-convert` and
//! Inkscape render it alike.

use super::metrics::RocCurve;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Okabe-Ito colours (distinguishable with colour-blindness), yellow left out for contrast.
const COLORS: [&str; 7] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
];
/// Dash patterns cycled after the colours run out, so series 8+ stay distinguishable.
const DASHES: [&str; 3] = ["", "7 4", "2 3"];
const FONT: &str = "DejaVu Sans, Verdana, Arial, Helvetica, sans-serif";
const WIDTH: f64 = 780.0;
/// Height of a chart without its legend, which goes below so it never hides data.
const HEIGHT: f64 = 560.0;
const LEGEND_ROW: f64 = 20.0;

/// One model's ROC curve for [`roc_svg`].
#[derive(Clone, Debug)]
pub struct RocSeries<'a> {
    pub name: &'a str,
    /// `[fpr, tpr]` points from (0, 0) to (1, 1), e.g. from [`roc_plot_points`].
    pub points: &'a [[f64; 2]],
    /// Shown in the legend when given.
    pub auc: Option<f64>,
}

/// Scale of the ROC chart's FPR axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FprScale {
    /// Decades from the smallest FPR the data can show up to 1: the low-FPR view.
    Log,
    /// 0 to 1.
    Linear,
}

/// The ROC curve thinned to what a chart can show: points closer than about a thousandth of
/// the axis (in linear FPR, log FPR and TPR alike) to the previous kept one are dropped, so a
/// 1M-line test set gives a few thousand points at most.
pub fn roc_plot_points(curve: &RocCurve) -> Vec<[f64; 2]> {
    let points = curve.points();
    let log = |f: f64| f.max(1e-9).log10();
    let mut kept: Vec<[f64; 2]> = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let last = i + 1 == points.len();
        let far = match kept.last() {
            None => true,
            Some(&[f, t]) => {
                (p.fpr - f).abs() > 1e-3
                    || (p.tpr - t).abs() > 1e-3
                    || (log(p.fpr) - log(f)).abs() > 4e-3
            }
        };
        if far || last {
            kept.push([p.fpr, p.tpr]);
        }
    }
    kept
}

/// Score counts per class in equal-width bins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Left edge of the first bin.
    pub lo: f64,
    /// Right edge of the last bin.
    pub hi: f64,
    /// Positive (malicious) lines per bin.
    pub positives: Vec<u64>,
    /// Negative (benign) lines per bin.
    pub negatives: Vec<u64>,
}

impl Histogram {
    /// Bin `scores` into `bins` equal bins spanning their range (a constant score gets a
    /// unit-wide range around it).
    pub fn new(scores: &[f64], labels: &[bool], bins: usize) -> Result<Self> {
        if scores.len() != labels.len() {
            return Err(Error::input(format!(
                "{} scores but {} labels: pass exactly one label per score",
                scores.len(),
                labels.len()
            )));
        }
        if bins == 0 {
            return Err(Error::input("a histogram needs at least one bin"));
        }
        if scores.is_empty() || scores.iter().any(|s| !s.is_finite()) {
            return Err(Error::input(
                "a histogram needs at least one score and only finite scores: drop NaN or \
                 infinite scores first",
            ));
        }
        let min = scores.iter().copied().fold(f64::INFINITY, f64::min);
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if max > min {
            (min, max)
        } else {
            (min - 0.5, max + 0.5)
        };
        let mut h = Histogram {
            lo,
            hi,
            positives: vec![0; bins],
            negatives: vec![0; bins],
        };
        for (&s, &l) in scores.iter().zip(labels) {
            let b = (((s - lo) / (hi - lo)) * bins as f64) as usize;
            let b = b.min(bins - 1);
            if l {
                h.positives[b] += 1;
            } else {
                h.negatives[b] += 1;
            }
        }
        Ok(h)
    }

    fn bins(&self) -> usize {
        self.positives.len()
    }
}

/// A vertical line on a histogram, e.g. the threshold for FPR 1e-3.
#[derive(Clone, Debug)]
pub struct Marker {
    pub label: String,
    pub score: f64,
}

/// Minimal SVG builder: every coordinate is in pixels of the final image.
struct Svg {
    out: String,
}

impl Svg {
    fn new(title: &str, height: f64) -> Self {
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="{FONT}">"#
        );
        let _ = writeln!(out, "<title>{}</title>", escape(title));
        let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
        Svg { out }
    }

    fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, style: &str) {
        let _ = writeln!(
            self.out,
            r#"<line x1="{x1:.2}" y1="{y1:.2}" x2="{x2:.2}" y2="{y2:.2}" {style}/>"#
        );
    }

    fn polyline(&mut self, points: &[(f64, f64)], style: &str) {
        let mut s = String::with_capacity(points.len() * 16);
        for (x, y) in points {
            let _ = write!(s, "{x:.2},{y:.2} ");
        }
        let _ = writeln!(
            self.out,
            r#"<polyline points="{}" fill="none" stroke-linejoin="round" {style}/>"#,
            s.trim_end()
        );
    }

    fn polygon(&mut self, points: &[(f64, f64)], style: &str) {
        let mut s = String::with_capacity(points.len() * 16);
        for (x, y) in points {
            let _ = write!(s, "{x:.2},{y:.2} ");
        }
        let _ = writeln!(self.out, r#"<polygon points="{}" {style}/>"#, s.trim_end());
    }

    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, style: &str) {
        let _ = writeln!(
            self.out,
            r#"<rect x="{x:.2}" y="{y:.2}" width="{w:.2}" height="{h:.2}" {style}/>"#
        );
    }

    /// Text whose content is already SVG (escaped, possibly with tspans).
    fn text_raw(&mut self, x: f64, y: f64, anchor: &str, size: f64, extra: &str, body: &str) {
        let _ = writeln!(
            self.out,
            r#"<text x="{x:.2}" y="{y:.2}" text-anchor="{anchor}" font-size="{size}" {extra}>{body}</text>"#
        );
    }

    fn text(&mut self, x: f64, y: f64, anchor: &str, size: f64, extra: &str, body: &str) {
        self.text_raw(x, y, anchor, size, extra, &escape(body));
    }

    fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// "10" with a raised exponent, or "1" for 10^0.
fn power_of_ten_label(exp: i32) -> String {
    match exp {
        0 => "1".into(),
        1 => "10".into(),
        _ => {
            // A typographic minus: the ASCII hyphen looks like a dash next to a digit.
            let exp = exp.to_string().replace('-', "\u{2212}");
            format!(r#"10<tspan dy="-7" font-size="10">{exp}</tspan>"#)
        }
    }
}

/// The plot rectangle inside the image.
#[derive(Clone, Copy)]
struct Frame {
    left: f64,
    top: f64,
    right: f64,
    bottom: f64,
}

impl Frame {
    fn standard() -> Self {
        Frame {
            left: 78.0,
            top: 52.0,
            right: WIDTH - 28.0,
            bottom: HEIGHT - 70.0,
        }
    }
    fn width(&self) -> f64 {
        self.right - self.left
    }
    fn height(&self) -> f64 {
        self.bottom - self.top
    }

    /// The chart's border (drawn over the data, so clipped ends look deliberate), its title
    /// and its axis labels: the part every chart shares.
    fn decorate(&self, svg: &mut Svg, title: &str, x_label: &str, y_label: &str) {
        svg.rect(
            self.left,
            self.top,
            self.width(),
            self.height(),
            r#"fill="none" stroke="black""#,
        );
        svg.text(
            WIDTH / 2.0,
            30.0,
            "middle",
            17.0,
            r#"font-weight="bold""#,
            title,
        );
        svg.text(
            self.left + self.width() / 2.0,
            HEIGHT - 30.0,
            "middle",
            14.0,
            "",
            x_label,
        );
        let (cx, cy) = (22.0, self.top + self.height() / 2.0);
        svg.text(
            cx,
            cy,
            "middle",
            14.0,
            &format!(r#"transform="rotate(-90 {cx} {cy})""#),
            y_label,
        );
    }
}

/// Round tick steps (1, 2 or 5 times a power of ten) giving about `count` ticks over the range.
fn nice_ticks(lo: f64, hi: f64, count: usize) -> (Vec<f64>, f64) {
    let raw = (hi - lo) / count.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    let ticks = (first..=last).map(|i| i as f64 * step).collect();
    (ticks, step)
}

fn tick_label(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
    if step >= 1e-4 && v.abs() < 1e6 {
        format!("{v:.decimals$}").replace('-', "\u{2212}")
    } else {
        format!("{v:.1e}").replace('-', "\u{2212}")
    }
}

fn series_style(i: usize) -> String {
    let color = COLORS[i % COLORS.len()];
    let dash = DASHES[(i / COLORS.len()) % DASHES.len()];
    let dash = if dash.is_empty() {
        String::new()
    } else {
        format!(r#" stroke-dasharray="{dash}""#)
    };
    format!(r#"stroke="{color}" stroke-width="2.2"{dash}"#)
}

/// ROC curves of several models on one chart, as an SVG document.
pub fn roc_svg(title: &str, series: &[RocSeries<'_>], scale: FprScale) -> String {
    let frame = Frame::standard();
    let entries: Vec<LegendEntry> = series
        .iter()
        .enumerate()
        .map(|(i, s)| LegendEntry {
            swatch: Swatch::Line(series_style(i)),
            label: match s.auc {
                Some(auc) => format!("{} (AUC {auc:.4})", s.name),
                None => s.name.to_string(),
            },
        })
        .collect();
    let legend = Legend::layout(entries, frame);
    let mut svg = Svg::new(title, HEIGHT + legend.height());
    // The smallest FPR any series can show sets the left edge of a log axis.
    let min_fpr = series
        .iter()
        .flat_map(|s| s.points.iter())
        .map(|p| p[0])
        .filter(|&f| f > 0.0)
        .fold(1.0f64, f64::min);
    let low_exp = ((min_fpr.log10() + 1e-9).floor() as i32).clamp(-6, -1);
    let x_of = |fpr: f64| -> f64 {
        let t = match scale {
            FprScale::Log => {
                let e = fpr.max(10f64.powi(low_exp)).log10();
                (e - low_exp as f64) / (-low_exp as f64)
            }
            FprScale::Linear => fpr,
        };
        frame.left + t.clamp(0.0, 1.0) * frame.width()
    };
    let y_of = |tpr: f64| frame.bottom - tpr.clamp(0.0, 1.0) * frame.height();

    // Grid and x ticks.
    let grid = r##"stroke="#dddddd" stroke-width="1""##;
    let minor = r##"stroke="#f0f0f0" stroke-width="1""##;
    match scale {
        FprScale::Log => {
            for exp in low_exp..=0 {
                let x = x_of(10f64.powi(exp));
                svg.line(x, frame.top, x, frame.bottom, grid);
                svg.line(x, frame.bottom, x, frame.bottom + 6.0, r#"stroke="black""#);
                svg.text_raw(
                    x,
                    frame.bottom + 22.0,
                    "middle",
                    13.0,
                    "",
                    &power_of_ten_label(exp),
                );
                if exp < 0 {
                    for m in 2..10 {
                        let x = x_of(m as f64 * 10f64.powi(exp));
                        svg.line(x, frame.top, x, frame.bottom, minor);
                        svg.line(x, frame.bottom, x, frame.bottom + 3.0, r#"stroke="black""#);
                    }
                }
            }
        }
        FprScale::Linear => {
            for i in 0..=10 {
                let f = i as f64 / 10.0;
                let x = x_of(f);
                svg.line(x, frame.top, x, frame.bottom, grid);
                svg.line(x, frame.bottom, x, frame.bottom + 6.0, r#"stroke="black""#);
                if i % 2 == 0 {
                    svg.text(
                        x,
                        frame.bottom + 22.0,
                        "middle",
                        13.0,
                        "",
                        &format!("{f:.1}"),
                    );
                }
            }
        }
    }
    for i in 0..=10 {
        let t = i as f64 / 10.0;
        let y = y_of(t);
        svg.line(frame.left, y, frame.right, y, grid);
        svg.line(frame.left - 6.0, y, frame.left, y, r#"stroke="black""#);
        if i % 2 == 0 {
            svg.text(
                frame.left - 10.0,
                y + 4.5,
                "end",
                13.0,
                "",
                &format!("{t:.1}"),
            );
        }
    }

    // Chance line (TPR = FPR); curved on a log axis, so sampled.
    let chance: Vec<(f64, f64)> = (0..=200)
        .map(|i| {
            let f = match scale {
                FprScale::Log => 10f64.powf(low_exp as f64 * (1.0 - i as f64 / 200.0)),
                FprScale::Linear => i as f64 / 200.0,
            };
            (x_of(f), y_of(f))
        })
        .collect();
    svg.polyline(
        &chance,
        r##"stroke="#999999" stroke-width="1.2" stroke-dasharray="5 4""##,
    );

    for (i, s) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (x_of(p[0]), y_of(p[1]))).collect();
        svg.polyline(&pts, &series_style(i));
    }

    // Frame on top of the curves so clipped ends look deliberate.
    let x_label = match scale {
        FprScale::Log => "False positive rate (log scale)",
        FprScale::Linear => "False positive rate",
    };
    frame.decorate(&mut svg, title, x_label, "True positive rate");
    if scale == FprScale::Log {
        svg.text_raw(
            frame.left,
            HEIGHT - 10.0,
            "start",
            11.0,
            r##"fill="#555555""##,
            // The raised exponent shifts what follows it, so it ends the line.
            &format!(
                "Dashed grey: chance. FPR 0 (no false positive) is drawn at the left edge, {}",
                power_of_ten_label(low_exp)
            ),
        );
    }

    legend.draw(&mut svg, HEIGHT);
    svg.finish()
}

/// How a legend entry is drawn: a line (ROC series) or a filled box (histogram class).
enum Swatch {
    Line(String),
    Box(String),
}

struct LegendEntry {
    swatch: Swatch,
    label: String,
}

/// A legend laid out in columns below the chart.
struct Legend {
    entries: Vec<LegendEntry>,
    frame: Frame,
    columns: usize,
    column_width: f64,
}

impl Legend {
    fn layout(entries: Vec<LegendEntry>, frame: Frame) -> Self {
        // Width from a generous average glyph width of DejaVu Sans at 13 px.
        let longest = entries
            .iter()
            .map(|e| e.label.chars().count())
            .max()
            .unwrap_or(0);
        let column_width = longest as f64 * 7.6 + 56.0;
        let columns =
            ((frame.width() / column_width).floor() as usize).clamp(1, entries.len().max(1));
        Legend {
            entries,
            frame,
            columns,
            column_width,
        }
    }

    fn rows(&self) -> usize {
        self.entries.len().div_ceil(self.columns)
    }

    /// Image height the legend adds.
    fn height(&self) -> f64 {
        if self.entries.is_empty() {
            0.0
        } else {
            self.rows() as f64 * LEGEND_ROW + 14.0
        }
    }

    fn draw(&self, svg: &mut Svg, top: f64) {
        if self.entries.is_empty() {
            return;
        }
        let width = (self.columns as f64 * self.column_width).min(self.frame.width());
        let left = self.frame.left + (self.frame.width() - width) / 2.0;
        let rows = self.rows();
        svg.rect(
            left - 8.0,
            top - 2.0,
            width + 8.0,
            rows as f64 * LEGEND_ROW + 6.0,
            r##"fill="none" stroke="#bbbbbb" rx="4""##,
        );
        for (i, e) in self.entries.iter().enumerate() {
            // Column-major, so the entries read top to bottom like a list.
            let (col, row) = (i / rows, i % rows);
            let x = left + col as f64 * self.column_width;
            let y = top + row as f64 * LEGEND_ROW + 14.0;
            match &e.swatch {
                Swatch::Line(style) => svg.line(x, y - 4.5, x + 32.0, y - 4.5, style),
                Swatch::Box(color) => svg.rect(
                    x + 4.0,
                    y - 10.5,
                    24.0,
                    12.0,
                    &format!(r#"fill="{color}" fill-opacity="0.35" stroke="{color}""#),
                ),
            }
            svg.text(x + 40.0, y, "start", 13.0, "", &e.label);
        }
    }
}

/// Score histogram of one model, per class, as an SVG document. Each class is normalised to
/// its own size and the y axis is logarithmic, so the sparse tails where low-FPR thresholds
/// live stay visible next to the bulk.
pub fn histogram_svg(title: &str, hist: &Histogram, markers: &[Marker]) -> String {
    let frame = Frame::standard();
    let bins = hist.bins();
    let total = |v: &[u64]| v.iter().sum::<u64>();
    let (n_pos, n_neg) = (total(&hist.positives), total(&hist.negatives));
    let (benign, malicious) = ("#0072B2", "#D55E00");
    let legend = Legend::layout(
        vec![
            LegendEntry {
                swatch: Swatch::Box(benign.into()),
                label: format!("benign (n = {n_neg})"),
            },
            LegendEntry {
                swatch: Swatch::Box(malicious.into()),
                label: format!("malicious (n = {n_pos})"),
            },
        ],
        frame,
    );
    let mut svg = Svg::new(title, HEIGHT + legend.height());
    let frac = |counts: &[u64], n: u64| -> Vec<f64> {
        counts
            .iter()
            .map(|&c| if n == 0 { 0.0 } else { c as f64 / n as f64 })
            .collect()
    };
    let (f_pos, f_neg) = (frac(&hist.positives, n_pos), frac(&hist.negatives, n_neg));
    let min_nonzero = f_pos
        .iter()
        .chain(&f_neg)
        .copied()
        .filter(|&f| f > 0.0)
        .fold(1.0f64, f64::min);
    let low_exp = ((min_nonzero.log10() + 1e-9).floor() as i32).clamp(-7, -1);
    let x_of = |s: f64| frame.left + (s - hist.lo) / (hist.hi - hist.lo) * frame.width();
    let y_of = |f: f64| {
        if f <= 0.0 {
            frame.bottom
        } else {
            let t = (f.log10() - low_exp as f64) / (-low_exp as f64);
            frame.bottom - t.clamp(0.0, 1.0) * frame.height()
        }
    };

    let grid = r##"stroke="#dddddd" stroke-width="1""##;
    for exp in low_exp..=0 {
        let y = y_of(10f64.powi(exp));
        svg.line(frame.left, y, frame.right, y, grid);
        svg.line(frame.left - 6.0, y, frame.left, y, r#"stroke="black""#);
        svg.text_raw(
            frame.left - 10.0,
            y + 4.5,
            "end",
            13.0,
            "",
            &power_of_ten_label(exp),
        );
    }
    let (ticks, step) = nice_ticks(hist.lo, hist.hi, 8);
    for t in ticks {
        let x = x_of(t);
        svg.line(x, frame.top, x, frame.bottom, grid);
        svg.line(x, frame.bottom, x, frame.bottom + 6.0, r#"stroke="black""#);
        svg.text(
            x,
            frame.bottom + 22.0,
            "middle",
            13.0,
            "",
            &tick_label(t, step),
        );
    }

    // Each class as a filled step outline down to the axis floor.
    let width = (hist.hi - hist.lo) / bins as f64;
    for (fracs, color) in [(&f_neg, benign), (&f_pos, malicious)] {
        let mut pts = vec![(x_of(hist.lo), frame.bottom)];
        for (b, &f) in fracs.iter().enumerate() {
            let y = y_of(f);
            pts.push((x_of(hist.lo + b as f64 * width), y));
            pts.push((x_of(hist.lo + (b + 1) as f64 * width), y));
        }
        pts.push((x_of(hist.hi), frame.bottom));
        svg.polygon(
            &pts,
            &format!(r#"fill="{color}" fill-opacity="0.18" stroke="none""#),
        );
        svg.polyline(&pts, &format!(r#"stroke="{color}" stroke-width="1.8""#));
    }

    // Threshold markers; markers at the same score share one line and one label. Labels run
    // up along their line (rotated), so neighbouring thresholds do not collide.
    let mut merged: Vec<(f64, Vec<&str>)> = Vec::new();
    for m in markers
        .iter()
        .filter(|m| (hist.lo..=hist.hi).contains(&m.score))
    {
        match merged.iter_mut().find(|(s, _)| *s == m.score) {
            Some((_, labels)) => labels.push(&m.label),
            None => merged.push((m.score, vec![&m.label])),
        }
    }
    for (score, labels) in &merged {
        let x = x_of(*score);
        svg.line(
            x,
            frame.top,
            x,
            frame.bottom,
            r##"stroke="#333333" stroke-width="1.2" stroke-dasharray="4 3""##,
        );
        let (tx, ty) = (x - 4.0, frame.top + 6.0);
        svg.text(
            tx,
            ty,
            "end",
            12.0,
            &format!(r##"fill="#333333" transform="rotate(-90 {tx:.2} {ty:.2})""##),
            &labels.join(", "),
        );
    }

    frame.decorate(
        &mut svg,
        title,
        "Score",
        "Fraction of the class (log scale)",
    );

    legend.draw(&mut svg, HEIGHT);
    svg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ticks_are_round() {
        let (t, step) = nice_ticks(0.0, 1.0, 8);
        assert_eq!(step, 0.2);
        assert_eq!(t.len(), 6);
        let (t, step) = nice_ticks(-3.2, 17.9, 8);
        assert_eq!(step, 5.0);
        assert_eq!(t, vec![0.0, 5.0, 10.0, 15.0]);
    }

    #[test]
    fn escape_handles_markup() {
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }

    #[test]
    fn histogram_bins_edges() {
        let h = Histogram::new(&[0.0, 0.5, 1.0, 1.0], &[false, false, true, true], 2).unwrap();
        assert_eq!(h.negatives, vec![1, 1]);
        assert_eq!(h.positives, vec![0, 2]);
        let h = Histogram::new(&[3.0, 3.0], &[false, true], 4).unwrap();
        assert_eq!((h.lo, h.hi), (2.5, 3.5));
        assert!(Histogram::new(&[f64::NAN], &[true], 4).is_err());
    }
}
