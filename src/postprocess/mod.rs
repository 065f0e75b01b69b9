//! From averaged query logits to the label map at the original image size (spec section 5):
//! bilinear resize, scaled softmax over the queries, synonym max, optional area threshold,
//! arg-max and probability threshold.
//!
//! Originals can have tens of megapixels and the class lists hundreds of queries, so the
//! queries x height x width tensor at the original size is never materialised: every output
//! pixel interpolates its own logits from the (much smaller) resized canvas, row by row in
//! parallel, and the area threshold's first pass only counts.
//!
//! When the probabilities are not kept, labels take shortcuts that provably give the
//! reference's labels: the arg-max of the logits where no near-tie could round differently
//! (no exp at all), and whole interpolation cells at once when the output is larger than the
//! canvas and one class clearly wins at all four corners of the cell.

mod refined;

use std::ops::Range;

use rayon::prelude::*;

use crate::interp::{linear_taps, LinearTap};
#[cfg(test)]
use crate::slide::QueryLogits;
use crate::slide::{CanvasRows, CanvasShape};

pub use refined::{postprocess_refined, Guide};

#[derive(Debug, Clone, PartialEq)]
pub struct PostprocessParams {
    /// Multiplies the logits (cosine similarities) before the softmax.
    pub logit_scale: f32,
    /// A pixel whose winning class probability is below this becomes background (0).
    pub prob_thd: f32,
    /// A non-background class whose arg-max area is at most this fraction of all
    /// non-background arg-max area is removed (probability 0 everywhere).
    pub area_thd: Option<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    pub width: usize,
    pub height: usize,
    /// height x width class labels, row-major.
    pub labels: Vec<u8>,
    /// classes x height x width class probabilities, as the labels were chosen from (classes
    /// removed by the area threshold are 0); only when requested.
    pub probs: Option<Vec<f32>>,
    /// How many pixels got each label.
    pub class_pixels: Vec<u64>,
}

impl Segmentation {
    /// (class index, fraction of the pixels) for every class in the mask, largest first.
    pub fn present_classes(&self) -> Vec<(usize, f64)> {
        let total = (self.width * self.height) as f64;
        let mut present: Vec<(usize, f64)> = self
            .class_pixels
            .iter()
            .enumerate()
            .filter(|(_, &pixels)| pixels > 0)
            .map(|(class, &pixels)| (class, pixels as f64 / total))
            .collect();
        present.sort_by(|a, b| b.1.total_cmp(&a.1));
        present
    }
}

impl Segmentation {
    /// All background, every count 0: to be filled in.
    fn blank(width: usize, height: usize, num_classes: usize, keep_probs: bool) -> Self {
        Segmentation {
            width,
            height,
            labels: vec![0; width * height],
            probs: keep_probs.then(|| vec![0.0; num_classes * width * height]),
            class_pixels: vec![0; num_classes],
        }
    }
}

/// `query_class[q]` is the class of query q (synonyms: several queries map to one class; class
/// 0 is the background). Resizes the queries x height x width logits to out_width x out_height
/// and labels every pixel (see the module documentation and spec section 5).
pub fn postprocess(
    logits: &impl CanvasRows,
    query_class: &[usize],
    num_classes: usize,
    out_width: usize,
    out_height: usize,
    params: &PostprocessParams,
    keep_probs: bool,
) -> Segmentation {
    let shape = logits.shape();
    let row_bytes = shape.width * shape.queries * std::mem::size_of::<f32>();
    let band_rows = BAND_BYTES / row_bytes.max(1);
    postprocess_in_bands(
        logits,
        query_class,
        num_classes,
        (out_width, out_height),
        params,
        keep_probs,
        band_rows,
    )
}

/// [`postprocess`] reading the canvas `band_rows` rows at a time (at least two).
fn postprocess_in_bands(
    logits: &impl CanvasRows,
    query_class: &[usize],
    num_classes: usize,
    (out_width, out_height): (usize, usize),
    params: &PostprocessParams,
    keep_probs: bool,
    band_rows: usize,
) -> Segmentation {
    check_inputs(logits, query_class, num_classes);
    let scorer = Scorer::new(query_class, vec![false; num_classes]);
    let mut segmentation = Segmentation::blank(out_width, out_height, num_classes, keep_probs);
    if segmentation.labels.is_empty() {
        return segmentation;
    }
    let geometry = Geometry::new(logits, out_width, out_height, params.logit_scale);
    let bands = geometry.bands(band_rows);
    let scorer = match params.area_thd {
        Some(area_thd) => {
            let mut areas = vec![0; num_classes];
            for band in &bands {
                let pixels = logits.rows(band.canvas_rows.clone());
                let resampler = geometry.resampler(&pixels, band.canvas_rows.start);
                let labeller = Labeller::new(&resampler, &scorer, None);
                let band_areas = arg_max_areas(&labeller, band.output_rows.clone());
                for (sum, area) in areas.iter_mut().zip(band_areas) {
                    *sum += area;
                }
            }
            let removed = small_classes(&areas, area_thd);
            Scorer::new(query_class, removed)
        }
        None => scorer,
    };

    // Per output row, one slice of each class's probability plane (none unless requested).
    let mut prob_rows: Vec<Vec<&mut [f32]>> = (0..out_height).map(|_| Vec::new()).collect();
    if let Some(probs) = segmentation.probs.as_mut() {
        for plane in probs.chunks_mut(out_width * out_height) {
            for (rows, row) in prob_rows.iter_mut().zip(plane.chunks_mut(out_width)) {
                rows.push(row);
            }
        }
    }
    // Probabilities are never negative, so a threshold at or below 0 (or NaN) never applies.
    let prob_thd = (params.prob_thd > 0.0).then_some(params.prob_thd);
    for band in &bands {
        let pixels = logits.rows(band.canvas_rows.clone());
        let resampler = geometry.resampler(&pixels, band.canvas_rows.start);
        let labeller = (!keep_probs).then(|| Labeller::new(&resampler, &scorer, prob_thd));
        let output = band.output_rows.clone();
        segmentation.labels[output.start * out_width..output.end * out_width]
            .par_chunks_mut(out_width)
            .zip(prob_rows[output.clone()].par_iter_mut())
            .enumerate()
            .for_each_init(
                || Scratch::new(geometry.queries, num_classes),
                |scratch, (offset, (label_row, prob_row))| {
                    let y = output.start + offset;
                    for (x, label) in label_row.iter_mut().enumerate() {
                        if let Some(labeller) = &labeller {
                            *label = labeller.at(y, x, scratch) as u8;
                            continue;
                        }
                        resampler.scaled_logits(y, x, &mut scratch.logits);
                        *label = scorer.thresholded_label(scratch, prob_thd) as u8;
                        for (plane_row, &prob) in prob_row.iter_mut().zip(&scratch.class_probs) {
                            plane_row[x] = prob;
                        }
                    }
                },
            );
    }
    for &label in &segmentation.labels {
        segmentation.class_pixels[usize::from(label)] += 1;
    }
    segmentation
}

fn check_inputs(logits: &impl CanvasRows, query_class: &[usize], num_classes: usize) {
    assert!(
        (1..=256).contains(&num_classes),
        "labels are bytes: 1 to 256 classes, not {num_classes}"
    );
    assert_eq!(
        query_class.len(),
        logits.shape().queries,
        "one class per query"
    );
    assert!(
        query_class.iter().all(|&class| class < num_classes),
        "query class out of range"
    );
    assert!(logits.shape().queries > 0, "no queries");
}

/// Canvas rows held at once: bands of about this many bytes of logits (at least the two rows
/// an output row interpolates between), so that a long class list costs time, not memory.
const BAND_BYTES: usize = 64 << 20;

/// The canvas's size and where each output pixel reads it.
struct Geometry {
    queries: usize,
    in_height: usize,
    in_width: usize,
    taps_y: Vec<LinearTap>,
    taps_x: Vec<LinearTap>,
    logit_scale: f32,
}

/// Output rows and the canvas rows they interpolate between.
struct Band {
    output_rows: Range<usize>,
    canvas_rows: Range<usize>,
}

impl Geometry {
    fn new(
        logits: &impl CanvasRows,
        out_width: usize,
        out_height: usize,
        logit_scale: f32,
    ) -> Self {
        let CanvasShape {
            queries,
            height,
            width,
        } = logits.shape();
        assert!(height > 0 && width > 0, "the logits cover no pixels");
        Geometry {
            queries,
            in_height: height,
            in_width: width,
            taps_y: linear_taps(height, out_height),
            taps_x: linear_taps(width, out_width),
            logit_scale,
        }
    }

    /// The output rows in runs that read at most `max_rows` canvas rows (at least two). The
    /// taps only move down the canvas, and an output row reads two neighbouring canvas rows.
    fn bands(&self, max_rows: usize) -> Vec<Band> {
        let max_rows = max_rows.max(2);
        let mut bands = Vec::new();
        let mut start = 0;
        while start < self.taps_y.len() {
            let first = self.taps_y[start].i0;
            let mut end = start + 1;
            while end < self.taps_y.len() && self.taps_y[end].i1 < first + max_rows {
                end += 1;
            }
            bands.push(Band {
                output_rows: start..end,
                canvas_rows: first..self.taps_y[end - 1].i1 + 1,
            });
            start = end;
        }
        bands
    }

    /// Resampling from canvas rows `first_row..` (`pixels`, rows x width x queries).
    fn resampler<'a>(&'a self, pixels: &'a [f32], first_row: usize) -> Resampler<'a> {
        let row_len = self.in_width * self.queries;
        assert_eq!(pixels.len() % row_len, 0, "whole canvas rows");
        assert!(first_row + pixels.len() / row_len <= self.in_height);
        Resampler {
            pixels,
            first_row,
            rows: pixels.len() / row_len,
            queries: self.queries,
            in_height: self.in_height,
            in_width: self.in_width,
            taps_y: &self.taps_y,
            taps_x: &self.taps_x,
            logit_scale: self.logit_scale,
        }
    }
}

/// Bilinear resampling of a band of (pixel-major) canvas rows at output pixels.
struct Resampler<'a> {
    /// Canvas rows `first_row..first_row + rows`, each in_width x queries.
    pixels: &'a [f32],
    first_row: usize,
    rows: usize,
    queries: usize,
    in_height: usize,
    in_width: usize,
    taps_y: &'a [LinearTap],
    taps_x: &'a [LinearTap],
    logit_scale: f32,
}

impl Resampler<'_> {
    /// The logits at output pixel (y, x) times the logit scale, rounded as the reference's
    /// resize followed by its separate multiplication.
    fn scaled_logits(&self, y: usize, x: usize, out: &mut [f32]) {
        let (tap_y, tap_x) = (&self.taps_y[y], &self.taps_x[x]);
        let queries = self.queries;
        let at = |row: usize, col: usize| {
            &self.pixels[((row - self.first_row) * self.in_width + col) * queries..][..queries]
        };
        let (upper_left, upper_right) = (at(tap_y.i0, tap_x.i0), at(tap_y.i0, tap_x.i1));
        let (lower_left, lower_right) = (at(tap_y.i1, tap_x.i0), at(tap_y.i1, tap_x.i1));
        // Indexing slices of one known length lets the compiler drop bounds checks and vectorise.
        let out = &mut out[..queries];
        for q in 0..queries {
            let upper = tap_x.apply(upper_left[q], upper_right[q]);
            let lower = tap_x.apply(lower_left[q], lower_right[q]);
            out[q] = tap_y.apply(upper, lower) * self.logit_scale;
        }
    }
}

/// Per-thread buffers, so that no pixel allocates.
struct Scratch {
    /// Scaled logits of the current pixel, one per query.
    logits: Vec<f32>,
    /// exp(logit - max logit), one per query.
    exps: Vec<f32>,
    class_probs: Vec<f32>,
}

impl Scratch {
    fn new(queries: usize, num_classes: usize) -> Self {
        Scratch {
            logits: vec![0.0; queries],
            exps: vec![0.0; queries],
            class_probs: vec![0.0; num_classes],
        }
    }
}

/// Below this (in scaled-logit units) a probability could underflow towards 0 and tie with the
/// removed classes' zeros, so the shortcut in [`Scorer::label`] leaves such pixels to the softmax.
const SHORTCUT_MIN_LOG_PROB: f32 = -60.0;

/// Two scaled logits closer than this might round to the same probability (exp and the division
/// each round), so the shortcut in [`Scorer::label`] leaves such near-ties to the softmax. The
/// margin is thousands of ulps of any f32 exp, and still rarely met by real logits.
const SHORTCUT_TIE_MARGIN: f32 = 1.0 / 1024.0;

/// Turns one pixel's scaled logits into class probabilities and a label.
struct Scorer<'a> {
    query_class: &'a [usize],
    /// Classes removed by the area threshold: probability 0 everywhere.
    removed: Vec<bool>,
    /// Per query, whether its class is removed.
    query_removed: Vec<bool>,
    any_removed: bool,
}

impl<'a> Scorer<'a> {
    fn new(query_class: &'a [usize], removed: Vec<bool>) -> Self {
        let query_removed = query_class.iter().map(|&class| removed[class]).collect();
        Scorer {
            query_class,
            any_removed: removed.contains(&true),
            removed,
            query_removed,
        }
    }

    /// The reference's class probabilities, into `scratch.class_probs`: softmax over all the
    /// queries (max-subtracted, summed in query order, divided), max over each class's queries,
    /// then 0 for removed classes.
    fn class_probs(&self, scratch: &mut Scratch) {
        let Scratch {
            logits,
            exps,
            class_probs,
        } = scratch;
        let max = max_of(logits);
        let mut sum = 0.0f32;
        for (exp, &logit) in exps.iter_mut().zip(logits.iter()) {
            *exp = (logit - max).exp();
            sum += *exp;
        }
        // The reference takes the max of the probabilities times a one-hot class mask, so a
        // class starts from 0 (and one without queries stays there).
        class_probs.fill(0.0);
        for (&exp, &class) in exps.iter().zip(self.query_class) {
            let prob = exp / sum;
            if prob > class_probs[class] {
                class_probs[class] = prob;
            }
        }
        for (prob, &removed) in class_probs.iter_mut().zip(&self.removed) {
            if removed {
                *prob = 0.0;
            }
        }
    }

    /// The arg-max class, ignoring the probability threshold.
    ///
    /// The softmax is monotonic, so the winner is the class of the largest logit among the
    /// classes not removed (the first class on exact ties), without a single exp — unless
    /// rounding could make the reference see something else: a rival logit within
    /// [`SHORTCUT_TIE_MARGIN`] (its probability might round to the same value, and then the
    /// first class wins), or a winning probability small enough to underflow. Those pixels go
    /// through the full softmax.
    fn label(&self, scratch: &mut Scratch) -> usize {
        let logits = &scratch.logits;
        let queries = || logits.iter().zip(self.query_class).zip(&self.query_removed);
        let max = max_of(logits);
        let best_logit = if self.any_removed {
            let kept = queries().filter(|&(_, &removed)| !removed);
            kept.fold(f32::NEG_INFINITY, |best, ((&logit, _), _)| best.max(logit))
        } else {
            max
        };
        let best_class = queries()
            .filter(|&((&logit, _), &removed)| !removed && logit == best_logit)
            .map(|((_, &class), _)| class)
            .min();
        // The reference exponentiates logit - max: judge closeness on exactly those values.
        // (NaN fails the first test.)
        let best_shifted = best_logit - max;
        let clear_of = best_shifted - SHORTCUT_TIE_MARGIN;
        if let Some(best_class) = best_class.filter(|_| best_shifted >= SHORTCUT_MIN_LOG_PROB) {
            // Usually the leader is the only query that close to the top: a count that
            // vectorises settles it, before the query-by-query test.
            let close = logits.iter().fold(0, |count, &logit| {
                count + usize::from(logit - max >= clear_of)
            });
            let unambiguous = close == 1
                || queries().all(|((&logit, &class), &removed)| {
                    let shifted = logit - max;
                    removed
                        || class == best_class
                        || shifted < clear_of
                        || (shifted == best_shifted && class > best_class)
                });
            if unambiguous {
                return best_class;
            }
        }
        self.class_probs(scratch);
        first_arg_max(&scratch.class_probs)
    }

    /// The reference's label: the arg-max of the class probabilities (left in
    /// `scratch.class_probs`), background where its probability is below `prob_thd`.
    fn thresholded_label(&self, scratch: &mut Scratch, prob_thd: Option<f32>) -> usize {
        self.class_probs(scratch);
        let winner = first_arg_max(&scratch.class_probs);
        match prob_thd {
            Some(prob_thd) if scratch.class_probs[winner] < prob_thd => 0,
            _ => winner,
        }
    }
}

/// The largest value (NaN ignored). Eight independent running maxima, so that the compiler
/// can vectorise what would otherwise be one long dependency chain.
fn max_of(values: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &value) in lanes.iter_mut().zip(chunk) {
            if value > *lane {
                *lane = value;
            }
        }
    }
    lanes
        .into_iter()
        .chain(tail.iter().copied())
        .fold(
            f32::NEG_INFINITY,
            |max, value| if value > max { value } else { max },
        )
}

/// Index of the largest value, the first one on ties (as torch.argmax).
fn first_arg_max(values: &[f32]) -> usize {
    let mut best = 0;
    for (index, &value) in values.iter().enumerate().skip(1) {
        if value > values[best] {
            best = index;
        }
    }
    best
}

/// Pixels per arg-max class in output rows `rows`, before any threshold.
fn arg_max_areas(labeller: &Labeller, rows: Range<usize>) -> Vec<u64> {
    let num_classes = labeller.scorer.removed.len();
    let resampler = labeller.resampler;
    let width = resampler.taps_x.len();
    rows.into_par_iter()
        .fold(
            || {
                (
                    Scratch::new(resampler.queries, num_classes),
                    vec![0u64; num_classes],
                )
            },
            |(mut scratch, mut areas), y| {
                for x in 0..width {
                    areas[labeller.at(y, x, &mut scratch)] += 1;
                }
                (scratch, areas)
            },
        )
        .map(|(_, areas)| areas)
        .reduce(
            || vec![0; num_classes],
            |mut total, areas| {
                for (sum, area) in total.iter_mut().zip(areas) {
                    *sum += area;
                }
                total
            },
        )
}

/// Labels at output pixels without their probabilities: per cell where possible, otherwise
/// per pixel.
struct Labeller<'a> {
    resampler: &'a Resampler<'a>,
    scorer: &'a Scorer<'a>,
    prob_thd: Option<f32>,
    /// Only worth building when the output has clearly more pixels than the canvas.
    cells: Option<CellLabels>,
}

impl<'a> Labeller<'a> {
    fn new(resampler: &'a Resampler<'a>, scorer: &'a Scorer<'a>, prob_thd: Option<f32>) -> Self {
        let out_pixels = resampler.taps_y.len() * resampler.taps_x.len();
        let in_pixels = resampler.in_height * resampler.in_width;
        let scale = resampler.logit_scale;
        let worthwhile = out_pixels >= 2 * in_pixels && scale > 0.0 && scale.is_finite();
        Labeller {
            resampler,
            scorer,
            prob_thd,
            cells: worthwhile.then(|| CellLabels::new(resampler, scorer, prob_thd)),
        }
    }

    fn at(&self, y: usize, x: usize, scratch: &mut Scratch) -> usize {
        let (tap_y, tap_x) = (&self.resampler.taps_y[y], &self.resampler.taps_x[x]);
        let cell = self
            .cells
            .as_ref()
            .and_then(|cells| cells.label(tap_y.i0, tap_x.i0));
        if let Some(label) = cell {
            return label;
        }
        self.resampler.scaled_logits(y, x, &mut scratch.logits);
        match self.prob_thd {
            None => self.scorer.label(scratch),
            Some(_) => self.scorer.thresholded_label(scratch, self.prob_thd),
        }
    }
}

/// The labels of whole interpolation cells (the output pixels that interpolate between the
/// same four canvas pixels) where the per-pixel route would give the same label everywhere:
/// - one query leads every rival class at all four corners by more than the shortcut margin of
///   [`Scorer::label`] plus any rounding, so that the shortcut would take it at every pixel;
/// - with a probability threshold, that query's probability is also clearly above the
///   threshold at all four corners, and so everywhere in between: -ln p is the log-sum-exp of
///   the logits' differences to the leader, a convex function of them.
///
/// Bilinear weights are non-negative and sum to one, so inside the cell every lead is at least
/// its smallest value at the corners, and -ln p at most its largest.
struct CellLabels {
    /// The first canvas row of the band the cells are in.
    first_row: usize,
    in_width: usize,
    /// Per cell of the band, named by its top-left canvas pixel.
    labels: Vec<Option<u8>>,
}

/// What a canvas pixel contributes to the cells that have it as a corner.
#[derive(Clone, Copy)]
struct Corner {
    /// The leading query among the classes kept, chosen as [`Scorer::label`] chooses (the first
    /// class on ties); None if any logit is NaN.
    best: Option<usize>,
    /// Its smallest lead over the kept queries of other classes (unscaled logits).
    rival_lead: f32,
    /// Its smallest lead over the queries of removed classes (negative when they are above).
    removed_lead: f32,
    /// The largest logit magnitude, which bounds the rounding errors.
    magnitude: f32,
    /// -ln of its softmax probability (0 when no threshold needs it).
    neg_log_prob: f64,
}

impl CellLabels {
    fn new(resampler: &Resampler, scorer: &Scorer, prob_thd: Option<f32>) -> Self {
        let scale = resampler.logit_scale;
        let corners: Vec<Corner> = resampler
            .pixels
            .par_chunks(resampler.queries)
            .map(|logits| Self::corner(scorer, logits, scale, prob_thd.is_some()))
            .collect();
        let (height, width) = (resampler.rows, resampler.in_width);
        // The band's last row starts cells only if it is the canvas's last row: otherwise its
        // cells reach into the next band, and no output row of this band reads them.
        let ends_canvas = resampler.first_row + height == resampler.in_height;
        let labels = (0..height * width)
            .into_par_iter()
            .map(|index| {
                let (row, col) = (index / width, index % width);
                if row + 1 == height && !ends_canvas {
                    return None;
                }
                let (next_row, next_col) = ((row + 1).min(height - 1), (col + 1).min(width - 1));
                let cell = [
                    corners[index],
                    corners[row * width + next_col],
                    corners[next_row * width + col],
                    corners[next_row * width + next_col],
                ];
                let best = cell[0].best?;
                let magnitude = cell.iter().map(|c| c.magnitude).fold(0.0, f32::max);
                // Interpolation, scaling and max-subtraction round at most a dozen times, each
                // by half an ulp of at most twice the largest scaled logit: 2^-14 of that logit
                // bounds them all with room to spare.
                let rounding = magnitude * scale / 16384.0;
                let needed_lead = 2.0 * SHORTCUT_TIE_MARGIN + rounding;
                // The reference's probability also carries the rounding of its exps, sum and
                // division: a relative 1e-3 plus an ulp per query covers them.
                let max_neg_log_prob = prob_thd.map_or(f64::INFINITY, |prob_thd| {
                    let slack =
                        1e-3 + f64::from(rounding) + resampler.queries as f64 * 2f64.powi(-22);
                    -f64::from(prob_thd).ln() - slack
                });
                let holds = cell.iter().all(|corner| {
                    corner.best == Some(best)
                        && corner.rival_lead * scale >= needed_lead
                        && corner.removed_lead * scale >= SHORTCUT_MIN_LOG_PROB + 1.0
                        && corner.neg_log_prob <= max_neg_log_prob
                });
                holds.then(|| scorer.query_class[best] as u8)
            })
            .collect();
        CellLabels {
            first_row: resampler.first_row,
            in_width: width,
            labels,
        }
    }

    fn corner(scorer: &Scorer, logits: &[f32], scale: f32, with_prob: bool) -> Corner {
        let queries = || {
            logits
                .iter()
                .zip(scorer.query_class)
                .zip(&scorer.query_removed)
        };
        let mut magnitude = 0.0f32;
        let mut best: Option<(f32, usize, usize)> = None;
        for (q, ((&logit, &class), &removed)) in queries().enumerate() {
            if logit.is_nan() {
                return Corner {
                    best: None,
                    rival_lead: 0.0,
                    removed_lead: 0.0,
                    magnitude: 0.0,
                    neg_log_prob: 0.0,
                };
            }
            magnitude = magnitude.max(logit.abs());
            let leads = match best {
                Some((best_logit, best_class, _)) => {
                    logit > best_logit || (logit == best_logit && class < best_class)
                }
                None => true,
            };
            if !removed && leads {
                best = Some((logit, class, q));
            }
        }
        let (mut rival_lead, mut removed_lead) = (f32::INFINITY, f32::INFINITY);
        let mut neg_log_prob = 0.0;
        if let Some((best_logit, best_class, _)) = best {
            for ((&logit, &class), &removed) in queries() {
                let lead = best_logit - logit;
                if removed {
                    removed_lead = removed_lead.min(lead);
                } else if class != best_class {
                    rival_lead = rival_lead.min(lead);
                }
            }
            if with_prob {
                let scale = f64::from(scale);
                let sum: f64 = logits
                    .iter()
                    .map(|&logit| (scale * (f64::from(logit) - f64::from(best_logit))).exp())
                    .sum();
                neg_log_prob = sum.ln();
            }
        }
        Corner {
            best: best.map(|(_, _, q)| q),
            rival_lead,
            removed_lead,
            magnitude,
            neg_log_prob,
        }
    }

    /// The label of every output pixel whose taps start at canvas pixel (row, col), if known.
    fn label(&self, row: usize, col: usize) -> Option<usize> {
        self.labels[(row - self.first_row) * self.in_width + col].map(usize::from)
    }
}

/// The classes the area threshold removes: non-background classes whose area is not above
/// `area_thd` times the total non-background area. The reference counts in f32 and multiplies
/// the threshold in f32, so the comparison is made in f32 too.
fn small_classes(areas: &[u64], area_thd: f32) -> Vec<bool> {
    let foreground: u64 = areas[1..].iter().sum();
    let limit = area_thd * foreground as f32;
    areas
        .iter()
        .enumerate()
        .map(|(class, &area)| {
            let kept = area as f32 > limit;
            class > 0 && !kept
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_close, uniform};

    const NO_THRESHOLDS: PostprocessParams = PostprocessParams {
        logit_scale: 1.0,
        prob_thd: 0.0,
        area_thd: None,
    };

    /// A 1-row canvas from per-pixel logit vectors, kept at its own size by `run`.
    fn row_of_pixels<const Q: usize>(pixels: &[[f32; Q]]) -> QueryLogits {
        QueryLogits {
            queries: Q,
            height: 1,
            width: pixels.len(),
            data: pixels.concat(),
        }
    }

    fn run(
        logits: &QueryLogits,
        query_class: &[usize],
        classes: usize,
        params: &PostprocessParams,
        keep_probs: bool,
    ) -> Segmentation {
        postprocess(
            logits,
            query_class,
            classes,
            logits.width,
            logits.height,
            params,
            keep_probs,
        )
    }

    /// Labels from the label-only route and from the route that computes every probability.
    fn labels_both_ways(
        logits: &QueryLogits,
        query_class: &[usize],
        classes: usize,
        params: &PostprocessParams,
    ) -> Vec<u8> {
        let quick = run(logits, query_class, classes, params, false);
        let full = run(logits, query_class, classes, params, true);
        assert_eq!(quick.labels, full.labels);
        assert_eq!(quick.class_pixels, full.class_pixels);
        quick.labels
    }

    #[test]
    fn scaled_softmax_over_queries() {
        // Scale 2 turns [0, ln(3)/2] into [0, ln 3]: probabilities 1/4 and 3/4.
        let logits = row_of_pixels(&[[0.0, 3f32.ln() / 2.0]]);
        let params = PostprocessParams {
            logit_scale: 2.0,
            ..NO_THRESHOLDS
        };
        let result = run(&logits, &[0, 1], 2, &params, true);
        assert_close(result.probs.as_ref().unwrap(), &[0.25, 0.75], 1e-6);
        assert_eq!(result.labels, [1]);
        assert_eq!(result.class_pixels, [0, 1]);
    }

    #[test]
    fn synonyms_take_the_max_not_the_sum() {
        // exp: [2, 1, 1.5] / 4.5. Class 1's names sum to 0.56 but their max is 0.33 < 0.44.
        let logits = row_of_pixels(&[[2f32.ln(), 0.0, 1.5f32.ln()]]);
        let result = run(&logits, &[0, 1, 1], 2, &NO_THRESHOLDS, true);
        assert_close(
            result.probs.as_ref().unwrap(),
            &[2.0 / 4.5, 1.5 / 4.5],
            1e-6,
        );
        assert_eq!(
            labels_both_ways(&logits, &[0, 1, 1], 2, &NO_THRESHOLDS),
            [0]
        );
    }

    #[test]
    fn area_threshold_removes_small_classes() {
        // Class 1 wins 1 pixel, class 2 wins 7, the background 2: 1 <= 0.2 * (1 + 7).
        let mut pixels = vec![[0.0, 2.0, 1.0], [2.0, 0.0, 1.0], [2.0, 0.0, 1.0]];
        pixels.extend([[0.0, 1.0, 2.0]; 7]);
        let logits = row_of_pixels(&pixels);
        let params = PostprocessParams {
            area_thd: Some(0.2),
            ..NO_THRESHOLDS
        };
        let result = run(&logits, &[0, 1, 2], 3, &params, true);
        // Class 1's pixel goes to its runner-up; class 1 is 0 everywhere.
        assert_eq!(result.labels, [2, 0, 0, 2, 2, 2, 2, 2, 2, 2]);
        assert_eq!(result.class_pixels, [2, 0, 8]);
        assert!(result.probs.as_ref().unwrap()[10..20]
            .iter()
            .all(|&p| p == 0.0));
        assert_eq!(
            labels_both_ways(&logits, &[0, 1, 2], 3, &params),
            result.labels
        );
    }

    #[test]
    fn area_threshold_removes_a_class_exactly_at_the_limit() {
        // Class 1 has 2 of 10 foreground pixels: 2 > 0.2 * 10 fails, so it goes; at 0.19 it stays.
        let mut pixels = vec![[0.0, 2.0, 1.0]; 2];
        pixels.extend([[0.0, 1.0, 2.0]; 8]);
        let logits = row_of_pixels(&pixels);
        let at_limit = PostprocessParams {
            area_thd: Some(0.2),
            ..NO_THRESHOLDS
        };
        assert_eq!(labels_both_ways(&logits, &[0, 1, 2], 3, &at_limit), [2; 10]);
        let below_limit = PostprocessParams {
            area_thd: Some(0.19),
            ..NO_THRESHOLDS
        };
        let labels = labels_both_ways(&logits, &[0, 1, 2], 3, &below_limit);
        assert_eq!(labels, [1, 1, 2, 2, 2, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn area_threshold_never_removes_the_background() {
        // The background's single pixel is not counted against it; class 1 (2 of 2) stays at
        // 0.9 and goes at 1.0, its pixels falling back to the background.
        let logits = row_of_pixels(&[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]);
        let params = |area| PostprocessParams {
            area_thd: Some(area),
            ..NO_THRESHOLDS
        };
        assert_eq!(
            labels_both_ways(&logits, &[0, 1], 2, &params(0.9)),
            [0, 1, 1]
        );
        assert_eq!(
            labels_both_ways(&logits, &[0, 1], 2, &params(1.0)),
            [0, 0, 0]
        );
    }

    #[test]
    fn removed_winner_with_underflowing_rivals_falls_to_the_first_class() {
        // At scale 1000 every probability but class 1's underflows to 0 on the first pixel; with
        // class 1 removed all its classes tie at 0, and the first (background) wins.
        let mut pixels = vec![[0.0, 1.0, 0.5]];
        pixels.extend([[0.0, 0.0, 1.0]; 9]);
        let logits = row_of_pixels(&pixels);
        let params = PostprocessParams {
            logit_scale: 1000.0,
            prob_thd: 0.0,
            area_thd: Some(0.2),
        };
        let labels = labels_both_ways(&logits, &[0, 1, 2], 3, &params);
        assert_eq!(labels, [0, 2, 2, 2, 2, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn probability_threshold_sets_background() {
        // Class 1 wins both pixels, with e^0.1 / (2 + e^0.1) = 0.36 and e^3 / (2 + e^3) = 0.91.
        let logits = row_of_pixels(&[[0.0, 0.1, 0.0], [0.0, 3.0, 0.0]]);
        let params = PostprocessParams {
            prob_thd: 0.5,
            ..NO_THRESHOLDS
        };
        for keep_probs in [false, true] {
            let result = run(&logits, &[0, 1, 2], 3, &params, keep_probs);
            assert_eq!(result.labels, [0, 1]);
            assert_eq!(result.class_pixels, [1, 1, 0]);
        }
        // The saved probabilities are those the labels were chosen from, before the threshold.
        let probs = run(&logits, &[0, 1, 2], 3, &params, true).probs.unwrap();
        assert!((probs[2] - 0.1f32.exp() / (2.0 + 0.1f32.exp())).abs() < 1e-6);
    }

    #[test]
    fn ties_go_to_the_first_class() {
        let logits = row_of_pixels(&[[0.0, 1.0, 1.0]]);
        assert_eq!(
            labels_both_ways(&logits, &[0, 1, 2], 3, &NO_THRESHOLDS),
            [1]
        );
        // The first class, not the first query: query 1 is class 2, query 2 is class 1.
        assert_eq!(
            labels_both_ways(&logits, &[0, 2, 1], 3, &NO_THRESHOLDS),
            [1]
        );
    }

    #[test]
    fn empty_output_has_no_pixels() {
        let logits = row_of_pixels(&[[0.0, 1.0]]);
        let result = postprocess(&logits, &[0, 1], 2, 0, 0, &NO_THRESHOLDS, true);
        assert!(result.labels.is_empty());
        assert_eq!(result.probs, Some(vec![]));
        assert_eq!(result.class_pixels, [0, 0]);
    }

    #[test]
    fn label_shortcut_agrees_with_the_softmax_on_near_ties() {
        // Logits on a coarse grid, some nudged by an ulp-sized step: exact ties, near-ties closer
        // than the shortcut's margin (at scale 0.5) and clear winners, over a resize.
        let (queries, height, width) = (8, 24, 31);
        let query_class = [0, 1, 2, 3, 1, 2, 4, 0];
        let coarse = uniform(queries * height * width, 7);
        let nudges = uniform(queries * height * width, 8);
        let data: Vec<f32> = coarse
            .iter()
            .zip(&nudges)
            .map(|(&c, &n)| (c * 8.0).round() * 1e-3 + if n > 0.3 { 1e-7 } else { 0.0 })
            .collect();
        let logits = QueryLogits::from_query_major(queries, height, width, &data);
        for logit_scale in [0.5, 40.0] {
            for area_thd in [None, Some(0.15)] {
                let params = PostprocessParams {
                    logit_scale,
                    prob_thd: 0.0,
                    area_thd,
                };
                let quick = postprocess(&logits, &query_class, 5, 37, 19, &params, false);
                let full = postprocess(&logits, &query_class, 5, 37, 19, &params, true);
                assert_eq!(
                    quick.labels, full.labels,
                    "scale {logit_scale}, area {area_thd:?}"
                );
            }
        }
    }

    #[test]
    fn cell_labels_agree_with_the_softmax_when_upscaling() {
        // Straight class boundaries on a 12 x 16 canvas upscaled about 5x, so that most output
        // pixels are labelled per cell, with traps for the cells' margins:
        // - in the top rows query 2 (class 2) sits a couple of ulps above query 1 (class 1):
        //   at scale 0.5 the reference's probabilities round to a tie there, which the first
        //   class wins;
        // - query 5 (background) equals query 1 exactly in a patch at the bottom: an exact tie;
        // - query 4 (class 3) dominates a small patch at the bottom right; the area threshold
        //   removes it, and at scale 2000 every other probability there underflows to 0, so the
        //   reference labels it background.
        let (queries, height, width) = (6, 12, 16);
        let query_class = [0, 1, 2, 1, 3, 0];
        let mut data = vec![0.0f32; queries * height * width];
        for y in 0..height {
            for x in 0..width {
                let (fy, fx) = (y as f32, x as f32);
                let rising = 0.15 + 0.01 * fx;
                let values = [
                    0.2,
                    rising,
                    if y < 3 { rising + 2e-8 } else { rising - 0.05 },
                    0.25 - 0.01 * fy,
                    if y >= 9 && x >= 13 { 1.0 } else { 0.0 },
                    if y >= 9 && (5..8).contains(&x) {
                        rising
                    } else {
                        0.19 + 0.004 * fx
                    },
                ];
                for (q, value) in values.into_iter().enumerate() {
                    data[(q * height + y) * width + x] = value;
                }
            }
        }
        let logits = QueryLogits::from_query_major(queries, height, width, &data);
        for logit_scale in [0.5, 40.0, 2000.0] {
            for area_thd in [None, Some(0.1)] {
                for prob_thd in [0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95] {
                    let params = PostprocessParams {
                        logit_scale,
                        prob_thd,
                        area_thd,
                    };
                    let quick = postprocess(&logits, &query_class, 4, 83, 61, &params, false);
                    let full = postprocess(&logits, &query_class, 4, 83, 61, &params, true);
                    let case = format!("scale {logit_scale}, area {area_thd:?}, prob {prob_thd}");
                    assert_eq!(quick.labels, full.labels, "{case}");
                }
            }
        }
        // The cells did label most of the image, and left the boundaries to the pixels.
        let geometry = Geometry::new(&logits, 83, 61, 40.0);
        let resampler = geometry.resampler(&logits.data, 0);
        let scorer = Scorer::new(&query_class, vec![false; 4]);
        let cells = Labeller::new(&resampler, &scorer, None).cells.unwrap();
        let known = cells.labels.iter().filter(|label| label.is_some()).count();
        assert!(known > cells.labels.len() / 2 && known < cells.labels.len());
    }

    /// Reading the canvas in bands of rows changes the memory, never a label or probability:
    /// up- and downscaled, with and without thresholds, bands down to two rows.
    #[test]
    fn bands_of_canvas_rows_give_what_the_whole_canvas_gives() {
        let (queries, height, width) = (5, 13, 9);
        let data: Vec<f32> = uniform(queries * height * width, 11)
            .iter()
            .map(|&u| 0.2 + 0.1 * u)
            .collect();
        let logits = QueryLogits::from_query_major(queries, height, width, &data);
        let query_class = [0, 1, 2, 1, 3];
        for (out_width, out_height) in [(9, 13), (31, 47), (4, 5), (20, 6)] {
            for (prob_thd, area_thd) in [(0.0, None), (0.4, Some(0.2))] {
                let params = PostprocessParams {
                    logit_scale: 40.0,
                    prob_thd,
                    area_thd,
                };
                for keep_probs in [false, true] {
                    let run = |band_rows| {
                        postprocess_in_bands(
                            &logits,
                            &query_class,
                            4,
                            (out_width, out_height),
                            &params,
                            keep_probs,
                            band_rows,
                        )
                    };
                    let whole = run(height);
                    assert_eq!(whole, run(usize::MAX));
                    let bands = Geometry::new(&logits, out_width, out_height, 40.0).bands(2);
                    assert!(bands.len() > 2, "{out_width} x {out_height}");
                    for band_rows in [0, 2, 3, 5] {
                        let banded = run(band_rows);
                        let bits = |s: &Segmentation| {
                            s.probs
                                .as_ref()
                                .map(|p| p.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
                        };
                        assert_eq!(banded.labels, whole.labels, "{band_rows} rows");
                        assert_eq!(bits(&banded), bits(&whole), "{band_rows} rows");
                    }
                }
            }
        }
    }

    #[test]
    fn threshold_cells_stop_at_the_threshold() {
        // Class 1 leads the background by 0.05 everywhere: at scale 40 its probability is
        // 1 / (1 + e^-2) = 0.8808 all over an 8 x 8 upscale of a 2 x 2 canvas. Thresholds just
        // above and just below it must give what the per-pixel softmax gives.
        let logits =
            QueryLogits::from_query_major(2, 2, 2, &[0.1, 0.2, 0.3, 0.4, 0.15, 0.25, 0.35, 0.45]);
        let prob = 1.0 / (1.0 + (-2.0f32).exp());
        for ratio in [1.0001, 1.0015, 1.002, 0.999, 0.99] {
            let params = PostprocessParams {
                logit_scale: 40.0,
                prob_thd: prob * ratio,
                area_thd: None,
            };
            let quick = postprocess(&logits, &[0, 1], 2, 8, 8, &params, false);
            let full = postprocess(&logits, &[0, 1], 2, 8, 8, &params, true);
            assert_eq!(
                quick.labels, full.labels,
                "threshold {ratio} x the probability"
            );
            let expected_label = if ratio > 1.0 { 0 } else { 1 };
            assert!(full.labels.iter().all(|&label| label == expected_label));
        }
        // Clearly below the threshold's margin the cells settle every pixel.
        let geometry = Geometry::new(&logits, 8, 8, 40.0);
        let resampler = geometry.resampler(&logits.data, 0);
        let scorer = Scorer::new(&[0, 1], vec![false; 2]);
        let cells = Labeller::new(&resampler, &scorer, Some(prob * 0.99))
            .cells
            .unwrap();
        assert!(cells.labels.iter().all(|&label| label == Some(1)));
    }

    // SCLIP's post-processing in PyTorch (F.interpolate bilinear to 7 x 16, * 40, softmax(0),
    // one-hot synonym max, area threshold, argmax, probability threshold) of
    // 0.2 + 0.1 * uniform(6 * 9 * 12, 2) as 6 queries x 9 x 12, queries -> classes [0, 1, 1, 2, 3, 0].
    #[rustfmt::skip]
    const RANDOM_LABELS_AREA_AND_PROB: [u8; 112] = [
        0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 2, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0,
        0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 1, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 1, 2,
    ];

    #[rustfmt::skip]
    const RANDOM_PROBS_AREA_AND_PROB: [f32; 448] = [
        0.36600626, 0.4016917, 0.33043277, 0.21197699, 0.098579854, 0.20977183, 0.17831774, 0.070882626,
        0.3573173, 0.48742297, 0.36617437, 0.16269052, 0.22689317, 0.24707721, 0.26196796, 0.2361788,
        0.22385319, 0.1124731, 0.07525836, 0.105390616, 0.13418964, 0.15381368, 0.08773844, 0.093954794,
        0.09922175, 0.25918338, 0.39323527, 0.351527, 0.15023696, 0.09241391, 0.13219093, 0.27012438,
        0.28048912, 0.22862461, 0.15157409, 0.08026342, 0.14054838, 0.1260832, 0.118104644, 0.06585858,
        0.09901658, 0.15312114, 0.17521603, 0.20750123, 0.25192392, 0.20656668, 0.25316238, 0.19869593,
        0.45804933, 0.13345526, 0.31413788, 0.41983673, 0.119774684, 0.1563119, 0.06588718, 0.040217813,
        0.11018714, 0.29165074, 0.4003042, 0.3109543, 0.1959001, 0.24161927, 0.35470143, 0.29962063,
        0.12572485, 0.124032214, 0.07966495, 0.1508302, 0.1380433, 0.16261826, 0.2145989, 0.28891844,
        0.35296023, 0.21092205, 0.21981429, 0.32194936, 0.18924722, 0.11462116, 0.12380029, 0.14496535,
        0.19034807, 0.35245562, 0.282811, 0.077141695, 0.0782544, 0.23559065, 0.18302433, 0.22489388,
        0.16240054, 0.3888574, 0.38186184, 0.23653324, 0.13275923, 0.1578203, 0.14002858, 0.09209077,
        0.25208253, 0.26408097, 0.18559197, 0.21309358, 0.29879028, 0.22447523, 0.1044019, 0.126117,
        0.31928295, 0.3523009, 0.18934402, 0.15600212, 0.295051, 0.09533936, 0.07575703, 0.084734485,
        0.087410755, 0.16681278, 0.2114959, 0.21142441, 0.33545738, 0.29964578, 0.14948434, 0.07097485,
        0.0917714, 0.23309878, 0.2561749, 0.29471758, 0.25771663, 0.20234108, 0.24241665, 0.28755116,
        0.16512999, 0.23094559, 0.27761728, 0.31808066, 0.2242614, 0.2120486, 0.23978807, 0.26824042,
        0.23291767, 0.14963578, 0.12603746, 0.21487002, 0.26579458, 0.22322306, 0.2775857, 0.47489026,
        0.13895921, 0.23218417, 0.3512322, 0.44083756, 0.5252227, 0.39527136, 0.3062919, 0.31093717,
        0.26277032, 0.16937332, 0.24970356, 0.23534304, 0.14933687, 0.14803208, 0.26963314, 0.54224724,
        0.22868212, 0.28006297, 0.13397542, 0.09964486, 0.1064875, 0.29035497, 0.34791884, 0.2360783,
        0.42340866, 0.33509684, 0.26356345, 0.063516095, 0.07049146, 0.085483365, 0.120208874, 0.23176748,
        0.04206539, 0.17090003, 0.43017456, 0.37385094, 0.25512967, 0.17873661, 0.21826935, 0.23313358,
        0.10491355, 0.17533475, 0.21098651, 0.12848195, 0.24730062, 0.30394724, 0.30882466, 0.32072595,
        0.13307372, 0.11917798, 0.18950003, 0.4147384, 0.5500012, 0.25789922, 0.23042901, 0.23695426,
        0.06655818, 0.19952987, 0.24930803, 0.22200544, 0.3170017, 0.23465872, 0.2379487, 0.3668166,
        0.044225555, 0.1947707, 0.3251902, 0.20583755, 0.26244193, 0.33593184, 0.21715009, 0.1276241,
        0.21980524, 0.29155844, 0.2931566, 0.1830499, 0.17283414, 0.3292291, 0.42848444, 0.24076326,
        0.04259465, 0.099111505, 0.15241268, 0.1331517, 0.068816155, 0.21867074, 0.42050332, 0.390911,
        0.2600171, 0.0733842, 0.084468484, 0.29030007, 0.35583723, 0.41558537, 0.28154418, 0.09183809,
        0.15875724, 0.24211663, 0.30863503, 0.30941334, 0.1051068, 0.29271078, 0.37792015, 0.20734695,
        0.117445014, 0.12964812, 0.10418698, 0.086175635, 0.14122477, 0.23354033, 0.19830719, 0.079070635,
        0.10877979, 0.13433586, 0.15373713, 0.10134024, 0.034003496, 0.11768565, 0.25411025, 0.2522418,
        0.19382305, 0.08608884, 0.053260513, 0.08235006, 0.25900432, 0.2618759, 0.18742442, 0.10171131,
        0.016817179, 0.15981175, 0.2777767, 0.14313844, 0.04802934, 0.07227417, 0.134635, 0.23635855,
        0.29503265, 0.1309702, 0.099836394, 0.1929421, 0.28717756, 0.47220668, 0.35034576, 0.15845312,
        0.23344748, 0.0683114, 0.03666493, 0.053889062, 0.19576699, 0.27727997, 0.1640895, 0.06306371,
        0.26827276, 0.30179524, 0.11771328, 0.025942683, 0.08625217, 0.18696773, 0.18106468, 0.085905395,
        0.30543897, 0.123249434, 0.12393522, 0.19214588, 0.044639006, 0.052029975, 0.083841, 0.21908459,
        0.50843376, 0.14326015, 0.07139485, 0.1349305, 0.12656641, 0.2765749, 0.32670867, 0.2051602,
        0.07352654, 0.0553134, 0.07685237, 0.21616568, 0.038029566, 0.15860233, 0.37749335, 0.3603944,
        0.21584633, 0.092881754, 0.15443863, 0.40185636, 0.10242653, 0.07118605, 0.1671641, 0.5534559,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
    ];

    #[rustfmt::skip]
    const RANDOM_LABELS_NO_THRESHOLDS: [u8; 112] = [
        0, 0, 0, 0, 1, 1, 2, 2, 0, 0, 0, 1, 2, 2, 2, 1,
        0, 2, 2, 1, 3, 2, 2, 1, 3, 0, 0, 0, 3, 2, 1, 1,
        0, 1, 1, 1, 1, 1, 1, 1, 3, 3, 1, 1, 2, 2, 1, 1,
        0, 3, 0, 0, 3, 1, 1, 3, 1, 1, 0, 3, 2, 2, 0, 0,
        3, 3, 1, 1, 1, 2, 1, 0, 0, 2, 3, 0, 3, 1, 1, 1,
        2, 0, 0, 1, 1, 1, 3, 1, 2, 0, 0, 0, 1, 2, 2, 1,
        3, 0, 1, 2, 0, 1, 2, 2, 0, 0, 1, 2, 0, 1, 1, 2,
    ];

    #[rustfmt::skip]
    const RANDOM_LABELS_AREA_ONLY: [u8; 112] = [
        0, 0, 0, 0, 1, 1, 2, 2, 0, 0, 0, 1, 2, 2, 2, 1,
        0, 2, 2, 1, 1, 2, 2, 1, 1, 0, 0, 0, 1, 2, 1, 1,
        0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 1, 1,
        0, 1, 0, 0, 0, 1, 1, 2, 1, 1, 0, 0, 2, 2, 0, 0,
        2, 1, 1, 1, 1, 2, 1, 0, 0, 2, 0, 0, 1, 1, 1, 1,
        2, 0, 0, 1, 1, 1, 1, 1, 2, 0, 0, 0, 1, 2, 2, 1,
        0, 0, 1, 2, 0, 1, 2, 2, 0, 0, 1, 2, 0, 1, 1, 2,
    ];

    #[test]
    fn random_case_matches_pytorch() {
        let data: Vec<f32> = uniform(6 * 9 * 12, 2)
            .iter()
            .map(|&u| 0.2 + 0.1 * u)
            .collect();
        let logits = QueryLogits::from_query_major(6, 9, 12, &data);
        let query_class = [0, 1, 1, 2, 3, 0];
        let params = |prob_thd, area_thd| PostprocessParams {
            logit_scale: 40.0,
            prob_thd,
            area_thd,
        };
        let cases: [(PostprocessParams, &[u8]); 3] = [
            // Class 3 has 15 of 81 foreground pixels (0.185 < 0.2) and is removed.
            (params(0.4, Some(0.2)), &RANDOM_LABELS_AREA_AND_PROB),
            (params(0.0, None), &RANDOM_LABELS_NO_THRESHOLDS),
            (params(0.0, Some(0.2)), &RANDOM_LABELS_AREA_ONLY),
        ];
        for (params, expected) in cases {
            for keep_probs in [false, true] {
                let result = postprocess(&logits, &query_class, 4, 16, 7, &params, keep_probs);
                assert_eq!((result.width, result.height), (16, 7));
                assert_eq!(result.labels, expected);
                let mut counts = vec![0u64; 4];
                for &label in expected {
                    counts[usize::from(label)] += 1;
                }
                assert_eq!(result.class_pixels, counts);
            }
        }
        let result = postprocess(
            &logits,
            &query_class,
            4,
            16,
            7,
            &params(0.4, Some(0.2)),
            true,
        );
        assert_close(&result.probs.unwrap(), &RANDOM_PROBS_AREA_AND_PROB, 1e-6);
    }
}
