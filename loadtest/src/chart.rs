//! An SVG chart of a run: accepted/s and persisted/s (left axis) and the
//! queue depth (right axis) over time, one point per 250 ms sample.

use crate::monitor::Sample;
use anyhow::Context;
use plotters::prelude::*;
use std::path::Path;

/// Rates between consecutive samples: (seconds, accepted/s, persisted/s, depth).
fn series(samples: &[Sample]) -> Vec<(f64, f64, f64, f64)> {
    samples
        .windows(2)
        .filter_map(|pair| {
            let (a, b) = (pair[0], pair[1]);
            let dt = (b.at - a.at).as_secs_f64();
            (dt > 0.0).then(|| {
                (
                    b.at.as_secs_f64(),
                    b.acknowledged.saturating_sub(a.acknowledged) as f64 / dt,
                    b.persisted.saturating_sub(a.persisted) as f64 / dt,
                    f64::from(b.queue_depth.unwrap_or(0)),
                )
            })
        })
        .collect()
}

/// Draws the chart of `samples` into `path` (SVG).
pub fn draw(path: &Path, title: &str, samples: &[Sample]) -> anyhow::Result<()> {
    let points = series(samples);
    let end = points.last().map_or(1.0, |p| p.0).max(1.0);
    let top_rate = points.iter().map(|p| p.1.max(p.2)).fold(1.0_f64, f64::max) * 1.1;
    let top_depth = points.iter().map(|p| p.3).fold(10.0_f64, f64::max) * 1.1;

    let root = SVGBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..end, 0.0..top_rate)
        .map_err(plot_error)?
        .set_secondary_coord(0.0..end, 0.0..top_depth);
    chart
        .configure_mesh()
        .x_desc("seconds since the first request")
        .y_desc("likes per second")
        .draw()
        .map_err(plot_error)?;
    chart
        .configure_secondary_axes()
        .y_desc("queue depth (ready messages)")
        .draw()
        .map_err(plot_error)?;

    let accepted = BLUE.stroke_width(2);
    chart
        .draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.1)), accepted))
        .map_err(plot_error)?
        .label("accepted/s")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], accepted));
    let persisted = GREEN.stroke_width(2);
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.0, p.2)),
            persisted,
        ))
        .map_err(plot_error)?
        .label("persisted/s")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], persisted));
    let depth = RED.stroke_width(1);
    chart
        .draw_secondary_series(LineSeries::new(points.iter().map(|p| (p.0, p.3)), depth))
        .map_err(plot_error)?
        .label("queue depth (right axis)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], depth));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_error)?;
    root.present()
        .with_context(|| format!("writing the chart to {}", path.display()))?;
    Ok(())
}

/// plotters' errors borrow the backend's error type; keep their text.
fn plot_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rates_come_from_consecutive_samples() {
        let at = |ms, ok, persisted, depth| Sample {
            at: Duration::from_millis(ms),
            sent: ok,
            acknowledged: ok,
            persisted,
            queue_depth: depth,
        };
        let points = series(&[
            at(0, 0, 0, Some(0)),
            at(250, 100, 50, Some(50)),
            at(500, 100, 100, None),
        ]);
        assert_eq!(points.len(), 2);
        assert_eq!(points[0], (0.25, 400.0, 200.0, 50.0));
        assert_eq!(points[1], (0.5, 0.0, 200.0, 0.0));
    }

    #[test]
    fn draws_an_svg() {
        let path = std::env::temp_dir().join(format!("likes-chart-{}.svg", std::process::id()));
        let samples: Vec<Sample> = (0..20)
            .map(|i| Sample {
                at: Duration::from_millis(250 * i),
                sent: i * 100,
                acknowledged: i * 100,
                persisted: i * 90,
                queue_depth: Some(u32::try_from(i).expect("small") * 10),
            })
            .collect();
        draw(&path, "test", &samples).expect("drawn");
        let svg = std::fs::read_to_string(&path).expect("written");
        std::fs::remove_file(&path).expect("removed");
        assert!(
            svg.starts_with("<svg") && svg.contains("accepted/s"),
            "{svg:.200}"
        );
    }
}
