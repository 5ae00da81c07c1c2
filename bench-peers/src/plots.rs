//! The plots BENCHMARKS.md shows, drawn by the benches themselves as SVG
//! (plotters' SVG backend writes text as text: no fonts needed here).
//!
//! They go to `bench-peers/plots/`, or to `$BUSLINE_PLOTS_DIR`; a run of
//! one contender (`BUSLINE_PEERS_ONLY`) draws none, leaving the full
//! run's plots as they are.

use std::{ops::Range, path::PathBuf};

use plotters::{
    coord::{
        ranged1d::{AsRangedCoord, ValueFormatter},
        Shift,
    },
    prelude::*,
};

const SIZE: (u32, u32) = (900, 540);

/// Tableau's ten colours: distinct on white, unlike a generated palette.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// An axis value: bytes in decimal units (the log axes' ticks are powers
/// of ten), counts as whole numbers.
fn tick(bytes: bool, v: f64) -> String {
    match v {
        v if bytes && v >= 1e6 => format!("{} MB", v / 1e6),
        v if bytes && v >= 1e3 => format!("{} kB", v / 1e3),
        v if bytes => format!("{v} B"),
        v if v >= 10.0 => format!("{v:.0}"),
        v => format!("{v}"),
    }
}

/// Whether this run measures some contenders only, and draws no plots.
fn partial() -> bool {
    std::env::var_os("BUSLINE_PEERS_ONLY").is_some()
}

/// Whether contender `name` is measured: all are, unless
/// `BUSLINE_PEERS_ONLY` names some (separated by commas).
pub(crate) fn measured(name: &str) -> bool {
    std::env::var("BUSLINE_PEERS_ONLY").map_or(true, |only| only.split(',').any(|o| o == name))
}

fn path(file: &str) -> PathBuf {
    let dir = std::env::var_os("BUSLINE_PLOTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/plots")));
    std::fs::create_dir_all(&dir).expect("the plots folder");
    dir.join(file)
}

/// A byte count as people write it: `64 B`, `16 KiB`, `4 MiB`.
pub fn bytes(n: f64) -> String {
    match n {
        n if n >= (1 << 20) as f64 => format!("{} MiB", n / (1 << 20) as f64),
        n if n >= 1024.0 => format!("{} KiB", n / 1024.0),
        n => format!("{n} B"),
    }
}

/// A range a little wider than the values, for a linear or a log axis.
fn span(values: impl Iterator<Item = f64> + Clone, log: bool) -> Range<f64> {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(0.0, f64::max);
    if log {
        lo / 1.5..hi * 1.5
    } else {
        0.0..hi * 1.1
    }
}

/// One line per series, a `y` for each of `xs` (a series with none is
/// left out); `log` sets each axis (x, y) to a log scale; an x axis
/// described as "bytes" is labelled in bytes.
pub fn lines(
    file: &str,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    log: (bool, bool),
    xs: &[f64],
    series: &[(&str, Vec<f64>)],
) {
    if partial() {
        return;
    }
    let series: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, ys)| !ys.is_empty())
        .map(|(name, ys)| (*name, xs.iter().copied().zip(ys.iter().copied()).collect()))
        .collect();
    let series = &series[..];
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.1));
    let (x, y) = (span(xs, log.0), span(ys, log.1));
    let file = path(file);
    let root = SVGBackend::new(&file, SIZE).into_drawing_area();
    let drawn = match log {
        (true, true) => draw_lines(
            &root,
            title,
            x.log_scale(),
            y.log_scale(),
            (x_desc, y_desc),
            series,
        ),
        (true, false) => draw_lines(&root, title, x.log_scale(), y, (x_desc, y_desc), series),
        (false, true) => draw_lines(&root, title, x, y.log_scale(), (x_desc, y_desc), series),
        (false, false) => draw_lines(&root, title, x, y, (x_desc, y_desc), series),
    };
    drawn
        .and_then(|()| root.present().map_err(|e| e.to_string()))
        .unwrap_or_else(|e| {
            eprintln!("cannot draw {}: {e}", file.display());
        });
    println!("\n(plot: {})", file.display());
}

fn draw_lines<X, Y>(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    x: X,
    y: Y,
    (x_desc, y_desc): (&str, &str),
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let e = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| tick(x_desc.contains("bytes"), *v))
        .y_label_formatter(&|v| tick(false, *v))
        .draw()
        .map_err(e)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLOURS[i % COLOURS.len()].to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    Ok(())
}

/// One horizontal bar per `(label, value)`, top to bottom, the value and
/// the label written at its end; busline's bars in colour, peers' grey.
pub fn bars(file: &str, title: &str, x_desc: &str, bars: &[(&str, f64)]) {
    if partial() {
        return;
    }
    let file = path(file);
    let root = SVGBackend::new(&file, (SIZE.0, 80 + 40 * bars.len() as u32)).into_drawing_area();
    let drawn = draw_bars(&root, title, x_desc, bars);
    drawn
        .and_then(|()| root.present().map_err(|e| e.to_string()))
        .unwrap_or_else(|e| {
            eprintln!("cannot draw {}: {e}", file.display());
        });
    println!("\n(plot: {})", file.display());
}

fn draw_bars(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    title: &str,
    x_desc: &str,
    bars: &[(&str, f64)],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<std::io::Error>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    // Room at the right for the longest label.
    let top = bars.iter().map(|b| b.1).fold(0.0, f64::max) * 1.6;
    let n = bars.len() as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(10)
        .build_cartesian_2d(0.0..top, 0.0..n)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc(x_desc)
        .draw()
        .map_err(e)?;
    for (i, (name, value)) in bars.iter().enumerate() {
        let y = n - i as f64;
        let color = if name.starts_with("busline") {
            COLOURS[0].to_rgba()
        } else {
            RGBAColor(150, 150, 150, 1.0)
        };
        chart
            .draw_series([Rectangle::new(
                [(0.0, y - 0.8), (*value, y - 0.2)],
                color.filled(),
            )])
            .map_err(e)?;
        chart
            .draw_series([Text::new(
                format!("{value:.1}  {name}"),
                (*value + top * 0.01, y - 0.35),
                ("sans-serif", 14),
            )])
            .map_err(e)?;
    }
    Ok(())
}
