//! Small SVG line charts: training curves (loss, learning rate, dev F1 against step) in a run folder,
//! F1 against each swept value in a sweep. A picture is quicker to read than a JSON file.

use std::fmt::Write as _;

/// One panel: a title, an x-axis label and (x, y) points. Points with a NaN or infinity are not
/// drawn; the panel says how many.
pub struct Series<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub points: &'a [(f64, f64)],
    /// x values without a y to draw, marked on the x axis with a red ×.
    pub flagged: Option<Flags<'a>>,
}

/// Marks on a panel's x axis, and what they are (e.g. "diverged": grid points whose run diverged).
pub struct Flags<'a> {
    pub note: &'a str,
    pub xs: &'a [f64],
}

const PANEL_W: f64 = 360.0;
const PANEL_H: f64 = 220.0;
const PAD: f64 = 44.0;

fn fmt_tick(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e4) {
        format!("{v:.1e}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

/// Line charts side by side, each with its own axes.
pub fn svg(panels: &[Series]) -> String {
    render(panels, true)
}

/// Scatter plots side by side (points, no lines), each with its own axes.
pub fn scatter_svg(panels: &[Series]) -> String {
    render(panels, false)
}

fn render(panels: &[Series], lines: bool) -> String {
    let width = PANEL_W * panels.len() as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{PANEL_H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        s,
        r#"<rect width="{width}" height="{PANEL_H}" fill="white"/>"#
    );
    for (k, p) in panels.iter().enumerate() {
        panel(&mut s, k as f64 * PANEL_W, p, lines);
    }
    s.push_str("</svg>\n");
    s
}

/// One panel starting at `x0`: title, axes, the finite points (a line and/or dots), end ticks, x label.
fn panel(s: &mut String, x0: f64, p: &Series, lines: bool) {
    let (l, r, t, b) = (x0 + PAD, x0 + PANEL_W - 12.0, 24.0, PANEL_H - 28.0);
    let _ = write!(
        s,
        r#"<text x="{}" y="16" text-anchor="middle" font-weight="bold">{}</text>"#,
        (l + r) / 2.0,
        escape(p.title)
    );
    let _ = write!(
        s,
        r##"<path d="M{l},{t} L{l},{b} L{r},{b}" stroke="#444" fill="none"/>"##
    );
    let finite: Vec<(f64, f64)> = p
        .points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let flags: Vec<f64> = p
        .flagged
        .iter()
        .flat_map(|f| f.xs.iter().copied().filter(|x| x.is_finite()))
        .collect();
    let floor = finite.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let floor = if floor.is_finite() { floor } else { 0.0 };
    let fitted: Vec<(f64, f64)> = finite
        .iter()
        .copied()
        .chain(flags.iter().map(|&x| (x, floor)))
        .collect();
    notes(s, p, (r, t), finite.len(), flags.len());
    let Some(scale) = Scale::fit(&fitted, (l, r, t, b)) else {
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#888">no data</text>"##,
            (l + r) / 2.0,
            (t + b) / 2.0
        );
        return;
    };
    marks(s, &finite, &scale, lines);
    for x in flags {
        let (cx, cy) = (scale.px(x), b);
        let _ = write!(
            s,
            r##"<path d="M{:.1},{:.1} L{:.1},{:.1} M{:.1},{:.1} L{:.1},{:.1}" stroke="#d62728" stroke-width="2"/>"##,
            cx - 4.0,
            cy - 4.0,
            cx + 4.0,
            cy + 4.0,
            cx - 4.0,
            cy + 4.0,
            cx + 4.0,
            cy - 4.0
        );
    }
    for (v, y) in [(scale.ymin, b), (scale.ymax, t)] {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            l - 4.0,
            y + 4.0,
            fmt_tick(v)
        );
    }
    for (v, x) in [(scale.xmin, l), (scale.xmax, r)] {
        let _ = write!(
            s,
            r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#,
            b + 14.0,
            fmt_tick(v)
        );
    }
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#444">{}</text>"##,
        (l + r) / 2.0,
        b + 24.0,
        escape(p.x_label)
    );
}

/// In a panel's top right corner: how many points were not drawn (not finite), and what its flags are.
fn notes(s: &mut String, p: &Series, (r, t): (f64, f64), drawn: usize, flags: usize) {
    let mut lines = Vec::new();
    let hidden = p.points.len() - drawn;
    if hidden > 0 {
        lines.push(format!("{hidden} non-finite point(s) not drawn"));
    }
    if let Some(f) = p.flagged.as_ref().filter(|_| flags > 0) {
        lines.push(format!("× {}", f.note));
    }
    for (k, line) in lines.iter().enumerate() {
        let _ = write!(
            s,
            r##"<text x="{r}" y="{}" text-anchor="end" fill="#d62728">{}</text>"##,
            t + 12.0 + 13.0 * k as f64,
            escape(line)
        );
    }
}

/// The data range of a panel mapped onto its plotting area (left, right, top, bottom).
struct Scale {
    xmin: f64,
    xmax: f64,
    ymin: f64,
    ymax: f64,
    area: (f64, f64, f64, f64),
}

impl Scale {
    /// None without points. A flat series gets a unit of room around it; a single x, a unit span.
    fn fit(points: &[(f64, f64)], area: (f64, f64, f64, f64)) -> Option<Scale> {
        if points.is_empty() {
            return None;
        }
        let range = |v: &dyn Fn(&(f64, f64)) -> f64| {
            points
                .iter()
                .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(v(p)), a.1.max(v(p))))
        };
        let (xmin, xmax) = range(&|p| p.0);
        let (ymin, ymax) = range(&|p| p.1);
        let (ymin, ymax) = if ymax > ymin {
            (ymin, ymax)
        } else {
            (ymin - 0.5, ymax + 0.5)
        };
        Some(Scale {
            xmin,
            xmax,
            ymin,
            ymax,
            area,
        })
    }

    fn px(&self, x: f64) -> f64 {
        let (l, r, _, _) = self.area;
        let span = if self.xmax > self.xmin {
            self.xmax - self.xmin
        } else {
            1.0
        };
        l + (x - self.xmin) / span * (r - l)
    }

    fn py(&self, y: f64) -> f64 {
        let (_, _, t, b) = self.area;
        b - (y - self.ymin) / (self.ymax - self.ymin) * (b - t)
    }
}

/// The points as a polyline (line charts) and as dots (scatter plots, and line charts of at most 30
/// points, where single points are worth seeing).
fn marks(s: &mut String, points: &[(f64, f64)], scale: &Scale, lines: bool) {
    if lines {
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", scale.px(x), scale.py(y)))
            .collect();
        let _ = write!(
            s,
            r##"<polyline points="{}" stroke="#1f77b4" stroke-width="1.5" fill="none"/>"##,
            path.join(" ")
        );
    }
    if !lines || points.len() <= 30 {
        for &(x, y) in points {
            let _ = write!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="#1f77b4"/>"##,
                scale.px(x),
                scale.py(y)
            );
        }
    }
}

/// Text made safe inside an SVG element (titles and labels come from metric and sweep key names).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_panels_and_empty_ones() {
        let pts = [(1.0, 2.0), (2.0, 1.0), (3.0, 0.5)];
        let out = super::svg(&[
            super::Series {
                title: "loss",
                x_label: "step",
                points: &pts,
                flagged: None,
            },
            super::Series {
                title: "dev F1",
                x_label: "step",
                points: &[],
                flagged: None,
            },
        ]);
        assert!(
            out.starts_with("<svg")
                && out.contains("polyline")
                && out.contains("no data")
                && out.contains("loss")
        );
    }

    #[test]
    fn names_are_escaped() {
        let out = super::scatter_svg(&[super::Series {
            title: "dev F1 vs <a&b>",
            x_label: "a&b",
            points: &[(1.0, 0.5)],
            flagged: None,
        }]);
        assert!(out.contains("dev F1 vs &lt;a&amp;b&gt;") && out.contains(">a&amp;b<"));
        assert!(!out.contains("<a&b>"));
    }

    /// A diverged run's NaN loss is left out with a note; flagged x values are marked with a note.
    #[test]
    fn non_finite_points_are_counted_and_flags_marked() {
        let pts = [(1.0, 2.0), (2.0, f64::NAN), (3.0, f64::INFINITY)];
        let out = super::svg(&[super::Series {
            title: "loss",
            x_label: "step",
            points: &pts,
            flagged: None,
        }]);
        assert!(out.contains("2 non-finite point(s) not drawn"), "{out}");
        assert!(!out.contains("NaN") && !out.contains("inf"), "{out}");
        let out = super::scatter_svg(&[super::Series {
            title: "dev F1 vs lr",
            x_label: "lr",
            points: &[],
            flagged: Some(super::Flags {
                note: "diverged",
                xs: &[1e30],
            }),
        }]);
        assert!(
            out.contains("× diverged") && out.contains("#d62728"),
            "{out}"
        );
        assert!(!out.contains("no data"), "{out}");
    }
}
