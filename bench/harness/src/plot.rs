//! `--plot FILE.svg`: latency against percentile, drawn with plotters' SVG backend.
//!
//! The x axis is the classic HdrHistogram one: `log10(1 / (1 - q))`, so 90 %, 99 %, 99.9 % and
//! 99.99 % are evenly spaced and the tail gets the room it deserves. The y axis is logarithmic.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::latencies::Latencies;

/// How far into the tail the curve goes: 99.999 %.
const NINES: f64 = 5.0;
/// Points per curve.
const POINTS: u32 = 250;

/// Draws one curve per `(label, latencies)` into an SVG file at `path`.
pub fn percentile_curve(
    path: &Path,
    title: &str,
    series: &[(&str, &Latencies)],
) -> anyhow::Result<()> {
    let highest = series
        .iter()
        .map(|(_, latencies)| latencies.max())
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..NINES, (1f64..highest * 1.2).log_scale())
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_labels(NINES as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .draw()
        .map_err(plot_error)?;
    for (index, (label, latencies)) in series.iter().enumerate() {
        let colour = Palette99::pick(index).to_rgba();
        let points = (0..=POINTS).map(|step| {
            let x = NINES * f64::from(step) / f64::from(POINTS);
            let quantile = 1.0 - 10f64.powf(-x);
            (x, latencies.at(quantile).max(1) as f64)
        });
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(plot_error)?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_error)?;
    root.present()
        .map_err(plot_error)
        .with_context(|| format!("writing {}", path.display()))
}

/// `0` → "0%", `2` → "99%", `3` → "99.9%".
fn percentile_label(x: f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.round() as usize).saturating_sub(2);
    format!("{percent:.decimals$}%")
}

fn plot_error<E: std::error::Error + Send + Sync + 'static>(err: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels_show_the_nines() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(4.0), "99.99%");
    }
}
