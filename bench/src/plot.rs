//! Plots of benchmark results as SVG (`plotters`' SVG backend: no system fonts and no C
//! libraries, so it builds and runs on a fresh Debian machine with only Rust).
//!
//! One figure, two panels stacked:
//!
//! 1. **Latency CDF** per series (operation kind, or ACT's read / large-block read / large-block
//!    write): x is the percentile on a "nines" axis, `-log10(1 - q)` (0 = p0, 1 = p90, 2 = p99,
//!    3 = p99.9 …, as HdrHistogram's percentile plots), y is the latency in ms on a log axis.
//! 2. **Rate over time** per series: operations per second against seconds since the start.
//!
//! PNG is not offered: a bitmap needs a rasterised font, which means either a system font
//! library (`ttf` feature: fontconfig + freetype, apt packages) or `ab_glyph` with a font file
//! found at run time — and `ab_glyph` then becomes the font backend of the SVG too, so SVG
//! would need the font file as well. Convert the SVG (`rsvg-convert -o out.png out.svg`, Debian's
//! `librsvg2-bin`) when a PNG is needed.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// One latency CDF: `(quantile in [0, 1], latency in µs)` points, quantiles increasing.
#[derive(Clone, Debug, PartialEq)]
pub struct CdfSeries {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One rate-over-time line: `(seconds since start, operations per second)` points.
#[derive(Clone, Debug, PartialEq)]
pub struct RateSeries {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Everything one figure shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlotData {
    /// Title over the whole figure (e.g. the command or workload).
    pub title: String,
    pub cdf: Vec<CdfSeries>,
    pub rate: Vec<RateSeries>,
    /// Y-axis label of the rate panel, e.g. "ops/s".
    pub rate_label: String,
}

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The file name does not end in `.svg`.
    #[error("plot {path}: only SVG is supported (name the file *.svg; convert with rsvg-convert for PNG)")]
    Format { path: String },
    /// Drawing or writing the file failed.
    #[error("plot {path}: {reason}")]
    Draw { path: String, reason: String },
}

/// Largest "nines" shown: p99.9999.
const MAX_NINES: f64 = 6.0;

/// `-log10(1 - q)`, capped at [`MAX_NINES`].
pub fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        return MAX_NINES;
    }
    (-(1.0 - q).log10()).clamp(0.0, MAX_NINES)
}

/// CDF points of a latency histogram recorded in **ns**: latency (µs) at quantiles spread evenly
/// on the nines axis (20 per decade), up to the histogram's resolution (`1 - 1/count`), then the
/// maximum. Empty for an empty histogram.
pub fn cdf_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let top = nines(1.0 - 1.0 / h.len() as f64).min(MAX_NINES);
    let mut out = Vec::new();
    let steps = (top * 20.0).ceil() as usize;
    for i in 0..=steps {
        let n = (i as f64 / 20.0).min(top);
        let q = 1.0 - 10f64.powf(-n);
        out.push((q, h.value_at_quantile(q) as f64 / 1e3));
    }
    out.push((1.0 - 10f64.powf(-top).min(1.0) / 10.0, h.max() as f64 / 1e3));
    out.dedup_by(|b, a| b.0 <= a.0);
    out
}

fn label_nines(n: &f64) -> String {
    let q = 100.0 * (1.0 - 10f64.powf(-*n));
    match n.round() as i32 {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        k if (*n - f64::from(k)).abs() < 1e-9 => format!("{q:.*}%", (k - 2) as usize),
        _ => format!("{q:.3}%"),
    }
}

/// Writes `data` as an SVG figure (1000 × 900 px) to `path`.
///
/// # Errors
/// [`PlotError::Format`] when `path` does not end in `.svg`; [`PlotError::Draw`] when drawing
/// or writing fails.
pub fn write_plot(path: &Path, data: &PlotData) -> Result<(), PlotError> {
    let shown = path.display().to_string();
    if path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase) != Some("svg".into()) {
        return Err(PlotError::Format { path: shown });
    }
    let draw_err = |e: &dyn std::fmt::Display| PlotError::Draw {
        path: shown.clone(),
        reason: e.to_string(),
    };
    let root = SVGBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(&e))?;
    let root = root.titled(&data.title, ("sans-serif", 18)).map_err(|e| draw_err(&e))?;
    let (top, bottom) = root.split_vertically(460);

    // Panel 1: latency CDF, nines on x, log latency (ms) on y.
    let all_ms = data
        .cdf
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1 / 1e3))
        .filter(|v| *v > 0.0);
    let (lo, hi) = all_ms.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if lo <= hi { (lo / 1.5, hi * 1.5) } else { (0.01, 10.0) };
    let max_n = data
        .cdf
        .iter()
        .flat_map(|s| s.points.iter().map(|p| nines(p.0)))
        .fold(1.0f64, f64::max)
        .ceil();
    let mut chart = ChartBuilder::on(&top)
        .caption("latency CDF", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_n, (lo..hi).log_scale())
        .map_err(|e| draw_err(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_labels(max_n as usize + 1)
        .x_label_formatter(&label_nines)
        .y_label_formatter(&|v| format!("{v}"))
        .draw()
        .map_err(|e| draw_err(&e))?;
    for (i, s) in data.cdf.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                s.points
                    .iter()
                    .filter(|p| p.1 > 0.0)
                    .map(|&(q, us)| (nines(q), us / 1e3)),
                color.stroke_width(2),
            ))
            .map_err(|e| draw_err(&e))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| draw_err(&e))?;

    // Panel 2: rate over time.
    let t_max = data
        .rate
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let r_max = data
        .rate
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("throughput over time", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..r_max)
        .map_err(|e| draw_err(&e))?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(data.rate_label.as_str())
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| draw_err(&e))?;
    for (i, s) in data.rate.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))
            .map_err(|e| draw_err(&e))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    if !data.rate.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw_err(&e))?;
    }
    root.present().map_err(|e| draw_err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(0.9) - 1.0).abs() < 1e-9);
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nines(1.0), MAX_NINES);
        assert_eq!(label_nines(&0.0), "0%");
        assert_eq!(label_nines(&2.0), "99%");
        assert_eq!(label_nines(&3.0), "99.9%");
        assert_eq!(label_nines(&5.0), "99.999%");
    }

    #[test]
    fn cdf_points_are_monotone_and_reach_the_max() {
        let mut h = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).unwrap();
        for i in 1..=10_000u64 {
            h.record(i * 1_000).unwrap(); // 1 µs .. 10 ms
        }
        let p = cdf_points(&h);
        assert!(p.len() > 50, "{}", p.len());
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{p:?}");
        let last = p.last().unwrap();
        assert!((last.1 - 10_000.0).abs() < 10.0, "{last:?}");
        assert!(cdf_points(&Histogram::<u64>::new(3).unwrap()).is_empty());
    }

    #[test]
    fn writes_a_non_empty_svg_and_refuses_png() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).unwrap();
        for i in 1..=1000u64 {
            h.record(100_000 + i * 997).unwrap();
        }
        let data = PlotData {
            title: "synthetic".into(),
            cdf: vec![CdfSeries {
                name: "read".into(),
                points: cdf_points(&h),
            }],
            rate: vec![RateSeries {
                name: "read".into(),
                points: (1..=10).map(|t| (f64::from(t), 1000.0 + f64::from(t))).collect(),
            }],
            rate_label: "ops/s".into(),
        };
        let path = dir.path().join("out.svg");
        write_plot(&path, &data).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.len() > 1000, "{} bytes", svg.len());
        assert!(svg.starts_with("<svg") || svg.contains("<svg"));
        assert!(svg.contains("latency CDF") && svg.contains("throughput over time"));
        assert!(svg.contains("<polyline"), "lines drawn");
        assert!(matches!(
            write_plot(&dir.path().join("out.png"), &data),
            Err(PlotError::Format { .. })
        ));
    }
}
