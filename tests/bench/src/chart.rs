//! `throughput.png`: for each report size, throughput and p99 latency against
//! concurrency, the service next to its limits (HTTP+HMAC floor, PostgreSQL, RabbitMQ).
//!
//! Text is drawn with `ab_glyph` from a TrueType file read at run time (DejaVu Sans from
//! Debian's `fonts-dejavu-core`), so no fontconfig or system font lookup is needed.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::matrix::Results;

/// Where Debian's `fonts-dejavu-core` puts the font `scripts/bench.sh` installs.
const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> anyhow::Result<()> {
    let bytes = FONT_PATHS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .context("no DejaVuSans.ttf found (apt-get install fonts-dejavu-core)")?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("DejaVuSans.ttf is not a usable font"))
}

type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

pub fn draw(results: &Results, path: &Path) -> anyhow::Result<()> {
    register_font()?;
    let rows = results.sizes.len().max(1);
    let root = BitMapBackend::new(path, (1400, 420 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let panels = root.split_evenly((rows, 2));
    let concurrency = &results.settings.concurrency;
    let x_max = concurrency.len().saturating_sub(1).max(1) as f64;
    let label = |x: &f64| {
        let i = x.round() as usize;
        if (x - x.round()).abs() < 0.01 {
            concurrency
                .get(i)
                .map_or_else(String::new, ToString::to_string)
        } else {
            String::new()
        }
    };
    let mq = results.rabbitmq.per_sec();
    for (row, size) in results.sizes.iter().enumerate() {
        let xs = || size.points.iter().enumerate().map(|(i, p)| (i as f64, p));
        let throughput: Vec<Series> = vec![
            (
                "end to end (200/s)",
                RED,
                xs().map(|(x, p)| (x, p.e2e.ok_per_sec())).collect(),
            ),
            (
                "HTTP+HMAC floor",
                BLUE,
                xs().map(|(x, p)| (x, p.floor.ok_per_sec())).collect(),
            ),
            (
                "PostgreSQL limit",
                GREEN,
                xs().map(|(x, p)| (x, p.postgres.per_sec())).collect(),
            ),
            ("RabbitMQ limit", MAGENTA, vec![(0.0, mq), (x_max, mq)]),
        ];
        let latency: Vec<Series> = vec![
            (
                "end to end p99",
                RED,
                xs().map(|(x, p)| (x, p.e2e.ms(0.99))).collect(),
            ),
            (
                "floor p99",
                BLUE,
                xs().map(|(x, p)| (x, p.floor.ms(0.99))).collect(),
            ),
            (
                "PostgreSQL tx p99",
                GREEN,
                xs().map(|(x, p)| (x, p.postgres.ms(0.99))).collect(),
            ),
        ];
        let name = size.size.name();
        panel(
            &panels[row * 2],
            &format!("{name} ({} tests): throughput", size.size.tests()),
            "per second",
            &throughput,
            x_max,
            &label,
        )?;
        panel(
            &panels[row * 2 + 1],
            &format!("{name} ({} tests): p99 latency", size.size.tests()),
            "ms",
            &latency,
            x_max,
            &label,
        )?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    series: &[Series],
    x_max: f64,
    label: &dyn Fn(&f64) -> String,
) -> anyhow::Result<()> {
    // Log scale: the floor and RabbitMQ run an order of magnitude or two above the
    // service and PostgreSQL, and a linear axis would flatten the interesting lines.
    let values = || {
        series
            .iter()
            .flat_map(|(_, _, points)| points.iter().map(|(_, y)| *y))
            .filter(|y| *y > 0.0)
    };
    let y_max = values().fold(1.0, f64::max) * 2.0;
    let y_min = values().fold(f64::MAX, f64::min).min(y_max / 4.0) / 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.2..x_max + 0.2, (y_min..y_max).log_scale())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("concurrency")
        .y_desc(y_desc)
        .x_labels(16)
        .x_label_formatter(label)
        .y_label_formatter(&|y: &f64| {
            if *y >= 10.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, color, points) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                points.iter().copied().filter(|(_, y)| *y > 0.0),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|(_, y)| *y > 0.0)
                    .map(|p| Circle::new(*p, 4, color.filled())),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
