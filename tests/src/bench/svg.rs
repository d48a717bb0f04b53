//! Two kinds of chart, written as SVG by hand: lines on log-log axes, and panels of bars.

use std::fmt::Write as _;

/// Colours that stay apart in print and for the common kinds of colour blindness.
pub const PALETTE: [&str; 6] = [
    "#0072b2", "#56b4e9", "#d55e00", "#e69f00", "#009e73", "#cc79a7",
];

/// One line of a line chart.
pub struct Series {
    pub name: String,
    pub colour: &'static str,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A compact number as people write it: 1k, 10k, 1.25M, 35, 0.41.
pub fn compact(v: f64) -> String {
    let trimmed = |digits: String, suffix: &str| {
        let digits = if digits.contains('.') {
            digits.trim_end_matches('0').trim_end_matches('.')
        } else {
            &digits
        };
        format!("{digits}{suffix}")
    };
    if v >= 1e6 {
        trimmed(format!("{:.3}", v / 1e6), "M")
    } else if v >= 1e3 {
        trimmed(format!("{:.3}", v / 1e3), "k")
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        trimmed(format!("{v:.1}"), "")
    } else {
        trimmed(format!("{v:.2}"), "")
    }
}

/// A time in milliseconds as people write it: 500 us, 1 ms, 100 ms, 1 s, 10 s.
pub fn duration_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", compact(ms / 1000.0))
    } else if ms >= 1.0 {
        format!("{} ms", compact(ms))
    } else {
        format!("{} us", compact(ms * 1000.0))
    }
}

fn decades(lo: f64, hi: f64) -> (f64, f64) {
    (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    )
}

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn header(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{}</text>\n",
        W / 2.0,
        escape(title)
    );
}

/// Grid lines and tick labels at 1, 2 and 5 of each decade of both axes.
fn grid(
    out: &mut String,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
    px: &dyn Fn(f64) -> f64,
    py: &dyn Fn(f64) -> f64,
    y_tick: fn(f64) -> String,
) {
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    for (lo, hi, vertical) in [(x0, x1, true), (y0, y1, false)] {
        let mut d = lo;
        while d <= hi {
            for (m, major) in [(1.0, true), (2.0, false), (5.0, false)] {
                let v = m * 10f64.powf(d);
                if v.log10() > hi + 1e-9 {
                    break;
                }
                let stroke = if major { "#bbb" } else { "#e6e6e6" };
                if vertical {
                    let x = px(v);
                    let _ = writeln!(
                        out,
                        "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"{stroke}\"/>",
                        TOP + ph
                    );
                    let _ = writeln!(
                        out,
                        "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">{}</text>",
                        TOP + ph + 16.0,
                        compact(v)
                    );
                } else {
                    let y = py(v);
                    let _ = writeln!(
                        out,
                        "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{stroke}\"/>",
                        LEFT + pw
                    );
                    let _ = writeln!(
                        out,
                        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#444\">{}</text>",
                        LEFT - 6.0,
                        y + 4.0,
                        y_tick(v)
                    );
                }
            }
            d += 1.0;
        }
    }
}

/// Lines on log-log axes, with a legend on the right; `y_tick` labels the y axis' ticks
/// ([`compact`] for counts, [`duration_ms`] for times in milliseconds).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    y_tick: fn(f64) -> String,
    series: &[Series],
) -> String {
    let mut out = String::new();
    header(&mut out, title);
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .collect();
    if all.is_empty() {
        out.push_str("<text x=\"50%\" y=\"50%\" text-anchor=\"middle\">no data</text>\n</svg>\n");
        return out;
    }
    let fold = |f: fn(&(f64, f64)) -> f64| {
        all.iter()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    };
    let (x0, x1) = decades(fold(|p| p.0).0, fold(|p| p.0).1);
    let (y0, y1) = decades(fold(|p| p.1).0, fold(|p| p.1).1);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let px = |x: f64| LEFT + (x.log10() - x0) / (x1 - x0) * pw;
    let py = |y: f64| TOP + ph - (y.log10() - y0) / (y1 - y0) * ph;
    grid(&mut out, (x0, x1), (y0, y1), &px, &py, y_tick);
    let _ = writeln!(
        out,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw:.1}\" height=\"{ph:.1}\" fill=\"none\" stroke=\"#888\"/>"
    );
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        LEFT + pw / 2.0,
        H - 12.0,
        escape(x_label)
    );
    let _ = writeln!(
        out,
        "<text transform=\"translate(18 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        TOP + ph / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| *x > 0.0 && *y > 0.0)
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let dash = if s.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        if pts.len() > 1 {
            let _ = writeln!(
                out,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{dash}/>",
                pts.join(" "),
                s.colour
            );
        }
        for p in &pts {
            let (x, y) = p.split_once(',').expect("x,y");
            let _ = writeln!(
                out,
                "<circle cx=\"{x}\" cy=\"{y}\" r=\"3.5\" fill=\"{}\"/>",
                s.colour
            );
        }
        #[expect(clippy::cast_precision_loss, reason = "a handful of series")]
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let lx = LEFT + pw + 16.0;
        let _ = writeln!(
            out,
            "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{}\" stroke-width=\"2\"{dash}/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            lx + 24.0,
            s.colour,
            lx + 30.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// One bar.
pub struct Bar {
    pub label: String,
    pub colour: &'static str,
    pub value: f64,
}

/// One panel of bars with its own scale.
pub struct Panel {
    pub title: String,
    pub bars: Vec<Bar>,
}

/// Panels side by side, each bar labelled with its value; a legend of the bar labels below.
pub fn bar_panels(title: &str, panels: &[Panel]) -> String {
    let mut out = String::new();
    header(&mut out, title);
    let panel_count = panels.len().max(1);
    #[expect(clippy::cast_precision_loss, reason = "a handful of panels")]
    let panel_w = (W - 40.0) / panel_count as f64;
    let (top, plot_h) = (TOP + 24.0, H - TOP - 24.0 - 80.0);
    for (i, p) in panels.iter().enumerate() {
        #[expect(clippy::cast_precision_loss, reason = "a handful of panels")]
        let x0 = 20.0 + i as f64 * panel_w;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>",
            x0 + panel_w / 2.0,
            top - 8.0,
            escape(&p.title)
        );
        let max = p.bars.iter().map(|b| b.value).fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/>",
            x0 + 10.0,
            top + plot_h,
            x0 + panel_w - 10.0,
            top + plot_h
        );
        #[expect(clippy::cast_precision_loss, reason = "a handful of bars")]
        let slot = (panel_w - 20.0) / p.bars.len().max(1) as f64;
        for (j, b) in p.bars.iter().enumerate() {
            let h = if max > 0.0 {
                b.value / max * (plot_h - 16.0)
            } else {
                0.0
            };
            #[expect(clippy::cast_precision_loss, reason = "a handful of bars")]
            let x = x0 + 10.0 + j as f64 * slot + slot * 0.15;
            let w = slot * 0.7;
            let y = top + plot_h - h;
            let _ = writeln!(
                out,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\">{}</text>",
                b.colour,
                x + w / 2.0,
                y - 4.0,
                compact(b.value)
            );
        }
    }
    // Legend: the bar labels of the first panel (every panel uses the same ones).
    if let Some(first) = panels.first() {
        for (j, b) in first.bars.iter().enumerate() {
            #[expect(clippy::cast_precision_loss, reason = "a handful of bars")]
            let x = 30.0 + (j % 2) as f64 * 340.0;
            #[expect(clippy::cast_precision_loss, reason = "a handful of bars")]
            let y = H - 56.0 + (j / 2) as f64 * 20.0;
            let _ = writeln!(
                out,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"14\" height=\"14\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                y - 11.0,
                b.colour,
                x + 20.0,
                y,
                escape(&b.label)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_times_read_as_people_write_them() {
        for (v, want) in [
            (1_000.0, "1k"),
            (10_000.0, "10k"),
            (100_000.0, "100k"),
            (1_500.0, "1.5k"),
            (1_250_000.0, "1.25M"),
            (35.0, "35"),
            (0.41, "0.41"),
        ] {
            assert_eq!(compact(v), want);
        }
        for (ms, want) in [
            (0.5, "500 us"),
            (1.0, "1 ms"),
            (100.0, "100 ms"),
            (1_000.0, "1 s"),
            (100_000.0, "100 s"),
        ] {
            assert_eq!(duration_ms(ms), want);
        }
    }

    #[test]
    fn a_time_chart_labels_its_ticks_as_times() {
        let chart = line_chart(
            "t",
            "Services",
            "time",
            duration_ms,
            &[Series {
                name: "s".into(),
                colour: PALETTE[0],
                dashed: false,
                points: vec![(1_000.0, 5.0), (30_000.0, 4_000.0)],
            }],
        );
        assert!(chart.contains(">1k<") && chart.contains(">10k<"), "{chart}");
        assert!(
            chart.contains(">1 ms<") && chart.contains(">1 s<"),
            "{chart}"
        );
        assert!(!chart.contains(".000k"), "{chart}");
    }
}
