//! Sliding-window inference geometry (spec section 4): where the windows go, and how their
//! per-patch logits are stretched back to pixels and averaged where windows overlap.

use std::borrow::Cow;
use std::ops::Range;

use rayon::prelude::*;

use crate::interp::{linear_taps, LinearTap};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// Windows of side `window` every `stride` pixels over a height x width image, row-major.
/// The last row and column are pulled back inside the image (so they overlap more), and a side
/// shorter than `window` gives windows as short as that side: nothing is ever padded.
pub fn window_grid(height: usize, width: usize, window: usize, stride: usize) -> Vec<Window> {
    assert!(
        window > 0 && stride > 0,
        "window and stride must be positive"
    );
    let count = |size: usize| (size + stride - 1).saturating_sub(window) / stride + 1;
    // Start and length of the i-th window along an axis of `size` pixels.
    let place = |i: usize, size: usize| {
        let end = (i * stride + window).min(size);
        let start = end.saturating_sub(window);
        (start, end - start)
    };
    let (rows, cols) = (count(height), count(width));
    (0..rows)
        .flat_map(|row| {
            let (top, window_height) = place(row, height);
            (0..cols).map(move |col| {
                let (left, window_width) = place(col, width);
                Window {
                    top,
                    left,
                    height: window_height,
                    width: window_width,
                }
            })
        })
        .collect()
}

/// The averaged logits of a canvas, read a band of rows at a time: with many names the whole
/// canvas is the largest buffer of a run, so post-processing never asks for all of it at once.
pub trait CanvasRows: Sync {
    fn shape(&self) -> CanvasShape;
    /// The logits of canvas rows `rows`, rows x width x queries: one pixel's logits for every
    /// query contiguous.
    fn rows(&self, rows: Range<usize>) -> Cow<'_, [f32]>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanvasShape {
    pub queries: usize,
    pub height: usize,
    pub width: usize,
}

/// Per-query logits for every pixel of a canvas, height x width x queries, held whole.
#[cfg(test)]
#[derive(Debug, Clone, PartialEq)]
pub struct QueryLogits {
    pub queries: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

#[cfg(test)]
impl QueryLogits {
    /// From queries x height x width logits, the layout of the reference's tensors.
    pub(crate) fn from_query_major(
        queries: usize,
        height: usize,
        width: usize,
        planes: &[f32],
    ) -> Self {
        assert_eq!(planes.len(), queries * height * width);
        let plane_len = height * width;
        let data = (0..plane_len)
            .flat_map(|pixel| (0..queries).map(move |q| planes[q * plane_len + pixel]))
            .collect();
        QueryLogits {
            queries,
            height,
            width,
            data,
        }
    }

    /// The logits as queries x height x width.
    pub(crate) fn query_major(&self) -> Vec<f32> {
        let plane_len = self.height * self.width;
        (0..self.queries)
            .flat_map(|q| (0..plane_len).map(move |pixel| self.data[pixel * self.queries + q]))
            .collect()
    }
}

#[cfg(test)]
impl CanvasRows for QueryLogits {
    fn shape(&self) -> CanvasShape {
        CanvasShape {
            queries: self.queries,
            height: self.height,
            width: self.width,
        }
    }

    fn rows(&self, rows: Range<usize>) -> Cow<'_, [f32]> {
        let row_len = self.width * self.queries;
        Cow::Borrowed(&self.data[rows.start * row_len..rows.end * row_len])
    }
}

/// Gathers an image's window logits and averages them into a full-size canvas where windows
/// overlap, weighting by the number of windows that covered each pixel.
///
/// Windows are kept at their patch grid until [`LogitCanvas::finish`]: a grid is a few
/// hundredths of the pixels it stretches to, and with hundreds of names the full canvas is the
/// largest buffer of a run, so only the image being post-processed holds one, not every image
/// in flight. The canvas is laid out as post-processing reads it (pixel-major), so that it is
/// handed over as it is rather than copied.
pub struct LogitCanvas {
    queries: usize,
    height: usize,
    width: usize,
    /// The windows added, in order.
    windows: Vec<WindowLogits>,
}

/// One window's logits at its patch grid.
struct WindowLogits {
    window: Window,
    grid_h: usize,
    grid_w: usize,
    /// grid_h x grid_w x queries: each patch's logits contiguous, as on the canvas.
    patches: Vec<f32>,
}

impl LogitCanvas {
    pub fn new(queries: usize, height: usize, width: usize) -> Self {
        LogitCanvas {
            queries,
            height,
            width,
            windows: Vec::new(),
        }
    }

    /// Adds one window's logits, queries x grid_h x grid_w (row-major), to be stretched
    /// bilinearly (align_corners = false) to the window's own size. The 0..patch-1 pixel rows
    /// and columns that no patch saw are covered by that stretch. Windows must be added in the
    /// reference's order (row-major) for the float sums to agree with it.
    pub fn add_window(&mut self, window: &Window, logits: &[f32], grid_h: usize, grid_w: usize) {
        assert!(
            window.top + window.height <= self.height && window.left + window.width <= self.width,
            "window {window:?} lies outside the {} x {} canvas",
            self.height,
            self.width
        );
        let grid_len = grid_h * grid_w;
        let queries = self.queries;
        assert_eq!(
            logits.len(),
            queries * grid_len,
            "expected {queries} queries x {grid_h} x {grid_w} logits"
        );
        let mut patches = vec![0.0; grid_len * queries];
        if queries > 0 {
            for (q, plane) in logits.chunks_exact(grid_len).enumerate() {
                for (patch, &logit) in patches.chunks_exact_mut(queries).zip(plane) {
                    patch[q] = logit;
                }
            }
        }
        self.windows.push(WindowLogits {
            window: *window,
            grid_h,
            grid_w,
            patches,
        });
    }

    /// The windows' average, ready to be read in bands of rows.
    /// Panics if a pixel was covered by no window (a grid whose stride is at most its window covers the image).
    pub fn finish(self) -> FinishedCanvas {
        let LogitCanvas {
            queries,
            height,
            width,
            windows,
        } = self;
        let mut coverage = vec![0u32; height * width];
        for WindowLogits { window, .. } in &windows {
            for row in window.top..window.top + window.height {
                let start = row * width + window.left;
                for count in &mut coverage[start..start + window.width] {
                    *count += 1;
                }
            }
        }
        assert!(
            coverage.iter().all(|&count| count > 0),
            "some pixels were covered by no window"
        );
        let taps = windows
            .iter()
            .map(|w| {
                (
                    linear_taps(w.grid_h, w.window.height),
                    linear_taps(w.grid_w, w.window.width),
                )
            })
            .collect();
        FinishedCanvas {
            shape: CanvasShape {
                queries,
                height,
                width,
            },
            windows,
            taps,
            coverage,
        }
    }
}

/// Every window of an image, each averaged into the canvas pixels it covers when a band of
/// rows is asked for.
pub struct FinishedCanvas {
    shape: CanvasShape,
    windows: Vec<WindowLogits>,
    /// Per window, its y and x stretch taps.
    taps: Vec<(Vec<LinearTap>, Vec<LinearTap>)>,
    /// height x width number of windows that covered each pixel.
    coverage: Vec<u32>,
}

impl CanvasRows for FinishedCanvas {
    fn shape(&self) -> CanvasShape {
        self.shape
    }

    fn rows(&self, rows: Range<usize>) -> Cow<'_, [f32]> {
        let CanvasShape { queries, width, .. } = self.shape;
        let mut sums = vec![0.0f32; rows.len() * width * queries];
        if sums.is_empty() {
            return Cow::Owned(sums);
        }
        let first = rows.start;
        sums.par_chunks_mut(width * queries)
            .zip(self.coverage[first * width..rows.end * width].par_chunks(width))
            .enumerate()
            .for_each(|(offset, (row, counts))| {
                let y = first + offset;
                // Each pixel adds the windows over it in the order they came, from 0.
                for (logits, (taps_y, taps_x)) in self.windows.iter().zip(&self.taps) {
                    let window = &logits.window;
                    if (window.top..window.top + window.height).contains(&y) {
                        logits.stretch_row_onto(&taps_y[y - window.top], taps_x, row, queries);
                    }
                }
                for (pixel, &count) in row.chunks_exact_mut(queries).zip(counts) {
                    for value in pixel {
                        *value /= count as f32;
                    }
                }
            });
        Cow::Owned(sums)
    }
}

impl WindowLogits {
    /// Adds the window's logits stretched to one of its pixel rows (at `tap_y`) onto that
    /// canvas row: stretched along x first, then y, the reference's order of rounding.
    fn stretch_row_onto(
        &self,
        tap_y: &LinearTap,
        taps_x: &[LinearTap],
        canvas_row: &mut [f32],
        queries: usize,
    ) {
        let grid_row_len = self.grid_w * queries;
        // Patch (grid row, grid column)'s logits.
        let patch =
            |row: usize, col: usize| &self.patches[row * grid_row_len + col * queries..][..queries];
        let window = &self.window;
        let out_row = &mut canvas_row[window.left * queries..][..window.width * queries];
        for (out, tap_x) in out_row.chunks_exact_mut(queries).zip(taps_x) {
            let (upper_left, upper_right) = (patch(tap_y.i0, tap_x.i0), patch(tap_y.i0, tap_x.i1));
            let (lower_left, lower_right) = (patch(tap_y.i1, tap_x.i0), patch(tap_y.i1, tap_x.i1));
            for q in 0..queries {
                let upper = tap_x.apply(upper_left[q], upper_right[q]);
                let lower = tap_x.apply(lower_left[q], lower_right[q]);
                out[q] += tap_y.apply(upper, lower);
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_close, pattern};

    fn windows(list: &[(usize, usize, usize, usize)]) -> Vec<Window> {
        list.iter()
            .map(|&(top, left, height, width)| Window {
                top,
                left,
                height,
                width,
            })
            .collect()
    }

    #[test]
    fn window_grid_landscape() {
        // rows = (336 - 224 + 111) / 112 + 1 = 2, cols = (448 - 224 + 111) / 112 + 1 = 3.
        let expected = windows(&[
            (0, 0, 224, 224),
            (0, 112, 224, 224),
            (0, 224, 224, 224),
            (112, 0, 224, 224),
            (112, 112, 224, 224),
            (112, 224, 224, 224),
        ]);
        assert_eq!(window_grid(336, 448, 224, 112), expected);
    }

    #[test]
    fn window_grid_square() {
        let expected = windows(&[
            (0, 0, 224, 224),
            (0, 112, 224, 224),
            (112, 0, 224, 224),
            (112, 112, 224, 224),
        ]);
        assert_eq!(window_grid(336, 336, 224, 112), expected);
    }

    #[test]
    fn window_grid_exactly_one_window() {
        assert_eq!(
            window_grid(224, 224, 224, 112),
            windows(&[(0, 0, 224, 224)])
        );
    }

    #[test]
    fn window_grid_smaller_than_the_crop() {
        // 100 rows: one row of 100-pixel-high windows; the second column is pulled back to
        // end at the right edge (x = 76..300).
        let expected = windows(&[(0, 0, 100, 224), (0, 76, 100, 224)]);
        assert_eq!(window_grid(100, 300, 224, 112), expected);
    }

    #[test]
    fn window_grid_tall_and_narrow() {
        // rows = (2048 - 224 + 111) / 112 + 1 = 18; the last one is pulled back to 1824..2048.
        let tops: Vec<usize> = (0..17).map(|i| i * 112).chain([1824]).collect();
        let expected: Vec<Window> = tops
            .iter()
            .map(|&top| Window {
                top,
                left: 0,
                height: 224,
                width: 68,
            })
            .collect();
        assert_eq!(window_grid(2048, 68, 224, 112), expected);
    }

    /// SCLIP's slide inference with `pattern(.., 7 + 31 k)` as window k's logits.
    fn slide(
        height: usize,
        width: usize,
        crop: usize,
        stride: usize,
        queries: usize,
        patch: usize,
    ) -> QueryLogits {
        let mut canvas = LogitCanvas::new(queries, height, width);
        for (k, window) in window_grid(height, width, crop, stride).iter().enumerate() {
            let (grid_h, grid_w) = (window.height / patch, window.width / patch);
            let logits = pattern(queries * grid_h * grid_w, 7 + 31 * k);
            canvas.add_window(window, &logits, grid_h, grid_w);
        }
        let finished = canvas.finish();
        let whole = finished.rows(0..height).into_owned();
        // Any band of rows is those rows of the whole.
        let row_len = width * queries;
        for band in [0..1, height / 3..height / 2 + 1, height - 1..height] {
            let rows = finished.rows(band.clone());
            assert_eq!(&rows[..], &whole[band.start * row_len..band.end * row_len]);
        }
        QueryLogits {
            queries,
            height,
            width,
            data: whole,
        }
    }

    // The reference loop (window logits laid out as SCLIP's, F.interpolate bilinear to the
    // window size, F.pad, sum, divide by the coverage count), 2 queries x height x width.
    #[rustfmt::skip]
    const CANVAS_6X9: [f32; 108] = [
        -0.493, -0.26325, 0.19624999, -0.018000007, -0.23225, -0.10187499, 0.127875, 0.25825, 0.48799998,
        -0.2835, -0.11624999, 0.21825, 0.06649999, -0.085250005, 0.013874993, 0.18112502, 0.28024998, 0.4475,
        -0.13225, -0.12124999, -0.09925, -0.09475002, -0.09025001, -0.06924999, -0.058249988, -0.037250012, -0.02625002,
        0.07725001, 0.056999996, 0.016500011, 0.052249983, 0.088, 0.030875027, 0.026250012, 0.047250003, 0.058249995,
        0.22850001, 0.20825002, 0.16775, 0.20349997, 0.23924999, -0.130375, -0.056874998, 0.042250015, 0.20950001,
        0.43800002, 0.41775, 0.37725002, 0.413, 0.44875, -0.045874998, 0.05887501, 0.18925002, 0.41900003,
        0.18300003, 0.16275002, 0.122250006, 0.15799999, 0.19375, 0.199125, 0.178875, 0.18424998, 0.16399997,
        0.14250003, 0.12225002, 0.081750005, 0.11749999, 0.15324998, 0.158625, 0.138375, 0.14374998, 0.123499975,
        0.16875002, 0.14850001, 0.108, 0.14374998, 0.17949998, 0.184875, 0.164625, 0.17, 0.14975,
        0.12825003, 0.10800002, 0.0675, 0.10325, 0.139, 0.144375, 0.124125004, 0.1295, 0.10925,
        0.15450002, 0.13425002, 0.09375, 0.12949999, 0.16524997, 0.170625, 0.15037501, 0.15575002, 0.13550003,
        0.11400002, 0.093750015, 0.05325, 0.08899999, 0.12474999, 0.130125, 0.10987501, 0.11525002, 0.09500003,
    ];

    #[rustfmt::skip]
    const CANVAS_3X9: [f32; 54] = [
        -0.493, -0.26325, 0.19624999, -0.018000007, -0.23225, -0.10187499, 0.127875, 0.25825, 0.48799998,
        -0.493, -0.26325, 0.19624999, -0.018000007, -0.23225, -0.10187499, 0.127875, 0.25825, 0.48799998,
        -0.493, -0.26325002, 0.19625, -0.018000022, -0.23225, -0.10187499, 0.127875, 0.25824997, 0.48799998,
        0.34500003, 0.32475, 0.28425002, 0.32, 0.35575, 0.361125, 0.340875, 0.34625, 0.32599998,
        0.34500003, 0.32475, 0.28425002, 0.32, 0.35575, 0.361125, 0.340875, 0.34625, 0.32599998,
        0.34500003, 0.32475004, 0.28425, 0.32, 0.35575, 0.361125, 0.340875, 0.34624997, 0.32599998,
    ];

    /// (row, column, value per query) at sampled pixels of the 150 x 200 case.
    #[rustfmt::skip]
    const CANVAS_150X200_SAMPLES: [(usize, usize, [f32; 3]); 12] = [
        (0, 0, [-0.493, -0.409, -0.325]),
        (0, 199, [0.16399997, 0.24800003, 0.33200002]),
        (149, 0, [0.17000002, 0.254, 0.338]),
        (149, 199, [-0.17300001, -0.08899999, -0.004999995]),
        (75, 100, [0.032955006, -0.0045200363, -0.049045064]),
        (10, 37, [0.30207002, 0.16857001, -0.39993]),
        (99, 150, [-0.029190006, -0.08564, -0.0016399883]),
        (100, 49, [0.17035, 0.0052500125, -0.13165002]),
        (120, 180, [0.22849002, 0.31249002, -0.092610046]),
        (33, 66, [0.007399984, -0.033549994, 0.050450005]),
        (64, 127, [-0.07459501, -0.0044699945, 0.07953001]),
        (140, 5, [0.13401993, 0.21801992, 0.3020199]),
    ];

    #[test]
    fn canvas_averages_overlapping_windows_like_pytorch() {
        // 6 x 9, crop 4, stride 3: 2 x 3 overlapping windows of 2 x 2 patches.
        let logits = slide(6, 9, 4, 3, 2, 2);
        assert_eq!((logits.queries, logits.height, logits.width), (2, 6, 9));
        assert_close(&logits.query_major(), &CANVAS_6X9, 1e-6);
    }

    #[test]
    fn canvas_with_windows_shorter_than_the_crop() {
        // 3 rows under a crop of 4: windows are 3 x 4 with a 1 x 2 patch grid, stretched.
        assert_close(&slide(3, 9, 4, 3, 2, 2).query_major(), &CANVAS_3X9, 1e-6);
    }

    #[test]
    fn canvas_with_patch_leftovers_matches_pytorch() {
        // 150 x 200, crop 100, stride 50, patch 16: 6 x 6 patches per 100-pixel window, whose
        // 4 leftover pixels are covered by the stretch.
        let logits = slide(150, 200, 100, 50, 3, 16);
        for (row, col, expected) in CANVAS_150X200_SAMPLES {
            let pixel = (row * 200 + col) * 3;
            assert_close(&logits.data[pixel..pixel + 3], &expected, 1e-6);
        }
    }

    #[test]
    #[should_panic(expected = "covered by no window")]
    fn finish_rejects_uncovered_pixels() {
        let mut canvas = LogitCanvas::new(1, 2, 2);
        let window = Window {
            top: 0,
            left: 0,
            height: 1,
            width: 2,
        };
        canvas.add_window(&window, &[1.0], 1, 1);
        canvas.finish();
    }
}
