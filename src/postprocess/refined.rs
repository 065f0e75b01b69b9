//! Post-processing with PAMR (spec section 7): the one path that needs the queries x height x
//! width logits at the original size, since every refinement step mixes each pixel's logits
//! with its neighbours'. They are materialised a tile at a time, each tile refined with a
//! margin of [`Pamr::reach`] pixels around it (so that its own pixels come out exact) and
//! labelled as [`postprocess`](super::postprocess) labels a pixel. Tiles are sized so that a
//! region's logits take at most about [`REGION_BYTES`]: memory does not grow with the image.

use std::ops::Range;

use rayon::prelude::*;

use super::{
    check_inputs, small_classes, Geometry, PostprocessParams, Scorer, Scratch, Segmentation,
};
use crate::interp::{linear_taps, LinearTap};
use crate::pamr::{refine, Pamr, RegionSize};
use crate::slide::CanvasRows;

/// The image PAMR compares pixels in: the normalised network input (3 x height x width).
#[derive(Debug, Clone, Copy)]
pub struct Guide<'a> {
    pub pixels: &'a [f32],
    pub width: usize,
    pub height: usize,
}

/// Logits held per refined region (twice over, while a step reads one copy and writes the other).
const REGION_BYTES: usize = 256 << 20;

/// [`postprocess`](super::postprocess) with the logits refined by `pamr` (at least one step),
/// guided by `guide` resized to the output size.
#[allow(clippy::too_many_arguments)]
pub fn postprocess_refined(
    logits: &impl CanvasRows,
    guide: Guide,
    pamr: &Pamr,
    query_class: &[usize],
    num_classes: usize,
    (out_width, out_height): (usize, usize),
    params: &PostprocessParams,
    keep_probs: bool,
) -> Segmentation {
    let tiles = tiles(
        out_width,
        out_height,
        logits.shape().queries,
        pamr.reach(),
        REGION_BYTES,
    );
    let refiner = Refiner::new(logits, guide, pamr, (out_width, out_height), params);
    label_tiles(
        &refiner,
        &tiles,
        query_class,
        num_classes,
        params,
        keep_probs,
    )
}

fn label_tiles(
    refiner: &Refiner<impl CanvasRows>,
    tiles: &[Tile],
    query_class: &[usize],
    num_classes: usize,
    params: &PostprocessParams,
    keep_probs: bool,
) -> Segmentation {
    check_inputs(refiner.logits, query_class, num_classes);
    let (out_width, out_height) = refiner.out_size;
    let mut segmentation = Segmentation::blank(out_width, out_height, num_classes, keep_probs);
    if segmentation.labels.is_empty() {
        return segmentation;
    }
    let queries = refiner.geometry.queries;
    // A single tile is refined once, even when the area threshold reads it twice.
    let mut kept: Option<Vec<f32>> = None;
    let scorer = match params.area_thd {
        Some(area_thd) => {
            let unthresholded = Scorer::new(query_class, vec![false; num_classes]);
            let mut areas = vec![0u64; num_classes];
            for tile in tiles {
                let refined = refiner.refined(tile);
                let tile_areas = refined
                    .par_chunks(queries)
                    .fold(
                        || (Scratch::new(queries, num_classes), vec![0u64; num_classes]),
                        |(mut scratch, mut areas), pixel| {
                            scratch.logits.copy_from_slice(pixel);
                            areas[unthresholded.label(&mut scratch)] += 1;
                            (scratch, areas)
                        },
                    )
                    .map(|(_, areas)| areas)
                    .reduce(|| vec![0; num_classes], add_counts);
                areas = add_counts(areas, tile_areas);
                if tiles.len() == 1 {
                    kept = Some(refined);
                }
            }
            Scorer::new(query_class, small_classes(&areas, area_thd))
        }
        None => Scorer::new(query_class, vec![false; num_classes]),
    };
    let prob_thd = (params.prob_thd > 0.0).then_some(params.prob_thd);
    for tile in tiles {
        let refined = kept.take().unwrap_or_else(|| refiner.refined(tile));
        let tile_width = tile.cols.len();
        let mut labels = vec![0u8; refined.len() / queries];
        let mut probs = vec![
            0.0f32;
            if keep_probs {
                labels.len() * num_classes
            } else {
                0
            }
        ];
        labels
            .par_chunks_mut(tile_width)
            .zip(refined.par_chunks(tile_width * queries))
            .zip(probs.par_chunks_mut((tile_width * num_classes).max(1)))
            .for_each_init(
                || Scratch::new(queries, num_classes),
                |scratch, ((label_row, logit_row), prob_row)| {
                    for (x, (label, pixel)) in label_row
                        .iter_mut()
                        .zip(logit_row.chunks_exact(queries))
                        .enumerate()
                    {
                        scratch.logits.copy_from_slice(pixel);
                        if !keep_probs && prob_thd.is_none() {
                            *label = scorer.label(scratch) as u8;
                            continue;
                        }
                        *label = scorer.thresholded_label(scratch, prob_thd) as u8;
                        if keep_probs {
                            prob_row[x * num_classes..][..num_classes]
                                .copy_from_slice(&scratch.class_probs);
                        }
                    }
                },
            );
        let plane = out_width * out_height;
        for (row, y) in tile.rows.clone().enumerate() {
            let at = y * out_width + tile.cols.start;
            segmentation.labels[at..at + tile_width]
                .copy_from_slice(&labels[row * tile_width..][..tile_width]);
            if let Some(out) = segmentation.probs.as_mut() {
                for (x, pixel) in probs[row * tile_width * num_classes..]
                    .chunks_exact(num_classes)
                    .take(tile_width)
                    .enumerate()
                {
                    for (class, &prob) in pixel.iter().enumerate() {
                        out[class * plane + at + x] = prob;
                    }
                }
            }
        }
    }
    for &label in &segmentation.labels {
        segmentation.class_pixels[usize::from(label)] += 1;
    }
    segmentation
}

fn add_counts(mut total: Vec<u64>, counts: Vec<u64>) -> Vec<u64> {
    for (sum, count) in total.iter_mut().zip(counts) {
        *sum += count;
    }
    total
}

/// A rectangle of output pixels refined and labelled together.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tile {
    rows: Range<usize>,
    cols: Range<usize>,
}

/// Tiles covering the output, each of whose regions (the tile and a margin of `reach` pixels,
/// within the image) holds about `region_bytes` of logits at most: the whole image when it
/// fits, else full-width bands, else squares when even a band `reach` rows high would not fit
/// (and then regions of 3 x `reach` pixels a side, whatever the budget: the least that keeps
/// the margins from outweighing the tiles).
fn tiles(
    width: usize,
    height: usize,
    queries: usize,
    reach: usize,
    region_bytes: usize,
) -> Vec<Tile> {
    let max_pixels = (region_bytes / (queries * std::mem::size_of::<f32>())).max(1);
    let margins = reach.saturating_mul(2);
    let (tile_height, tile_width) = if width.saturating_mul(height) <= max_pixels {
        (height, width)
    } else {
        let band_fits = width.saturating_mul(reach.saturating_mul(3)) <= max_pixels;
        let tile_width = if band_fits {
            width
        } else {
            let side = (max_pixels as f64).sqrt() as usize;
            side.saturating_sub(margins).max(reach).clamp(1, width)
        };
        let region_width = if tile_width == width {
            width
        } else {
            tile_width.saturating_add(margins).min(width)
        };
        let tile_height = (max_pixels / region_width).saturating_sub(margins);
        (tile_height.max(reach).clamp(1, height), tile_width)
    };
    let mut tiles = Vec::new();
    for top in (0..height).step_by(tile_height) {
        for left in (0..width).step_by(tile_width) {
            tiles.push(Tile {
                rows: top..(top + tile_height).min(height),
                cols: left..(left + tile_width).min(width),
            });
        }
    }
    tiles
}

/// Materialises and refines the logits of a tile's region.
struct Refiner<'a, C> {
    logits: &'a C,
    /// Resamples the canvas without the logit scale: PAMR refines the cosine logits.
    geometry: Geometry,
    guide: Guide<'a>,
    guide_taps_y: Vec<LinearTap>,
    guide_taps_x: Vec<LinearTap>,
    pamr: &'a Pamr,
    out_size: (usize, usize),
    logit_scale: f32,
}

impl<'a, C: CanvasRows> Refiner<'a, C> {
    fn new(
        logits: &'a C,
        guide: Guide<'a>,
        pamr: &'a Pamr,
        (out_width, out_height): (usize, usize),
        params: &PostprocessParams,
    ) -> Self {
        assert_eq!(
            guide.pixels.len(),
            3 * guide.width * guide.height,
            "three guide channels"
        );
        Refiner {
            logits,
            geometry: Geometry::new(logits, out_width, out_height, 1.0),
            guide,
            guide_taps_y: linear_taps(guide.height, out_height),
            guide_taps_x: linear_taps(guide.width, out_width),
            pamr,
            out_size: (out_width, out_height),
            logit_scale: params.logit_scale,
        }
    }

    /// The tile's refined logits times the logit scale, pixel-major (rows x cols x queries).
    fn refined(&self, tile: &Tile) -> Vec<f32> {
        let (out_width, out_height) = self.out_size;
        let reach = self.pamr.reach();
        let rows = tile.rows.start.saturating_sub(reach)
            ..tile.rows.end.saturating_add(reach).min(out_height);
        let cols = tile.cols.start.saturating_sub(reach)
            ..tile.cols.end.saturating_add(reach).min(out_width);
        let queries = self.geometry.queries;
        let size = RegionSize {
            height: rows.len(),
            width: cols.len(),
        };

        let taps_y = &self.geometry.taps_y;
        let canvas_rows = taps_y[rows.start].i0..taps_y[rows.end - 1].i1 + 1;
        let pixels = self.logits.rows(canvas_rows.clone());
        let resampler = self.geometry.resampler(&pixels, canvas_rows.start);
        let mut mask = vec![0.0f32; size.height * size.width * queries];
        mask.par_chunks_mut(size.width * queries)
            .zip(rows.clone())
            .for_each(|(row, y)| {
                for (pixel, x) in row.chunks_exact_mut(queries).zip(cols.clone()) {
                    resampler.scaled_logits(y, x, pixel);
                }
            });

        let Guide {
            pixels: guide,
            width,
            height,
        } = self.guide;
        let mut region_guide = Vec::with_capacity(3 * size.height * size.width);
        for plane in guide.chunks_exact(width * height) {
            for y in rows.clone() {
                let tap_y = &self.guide_taps_y[y];
                let (upper, lower) = (&plane[tap_y.i0 * width..], &plane[tap_y.i1 * width..]);
                for x in cols.clone() {
                    let tap_x = &self.guide_taps_x[x];
                    let top = tap_x.apply(upper[tap_x.i0], upper[tap_x.i1]);
                    let bottom = tap_x.apply(lower[tap_x.i0], lower[tap_x.i1]);
                    region_guide.push(tap_y.apply(top, bottom));
                }
            }
        }

        let refined = refine(&region_guide, mask, size, self.pamr);
        let (top, left) = (tile.rows.start - rows.start, tile.cols.start - cols.start);
        let mut interior = Vec::with_capacity(tile.rows.len() * tile.cols.len() * queries);
        for row in refined
            .chunks_exact(size.width * queries)
            .skip(top)
            .take(tile.rows.len())
        {
            let kept = &row[left * queries..(left + tile.cols.len()) * queries];
            interior.extend(kept.iter().map(|&logit| logit * self.logit_scale));
        }
        interior
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slide::QueryLogits;

    #[test]
    fn tiles_cover_the_output_once_and_fit_the_budget() {
        for (width, height, queries, reach, budget) in [
            (40, 30, 3, 8, 1 << 20),
            (40, 30, 3, 4, 40 * 16 * 3 * 4),
            (40, 30, 3, 2, 12 * 12 * 3 * 4),
            (7, 5, 1, 0, 4),
        ] {
            let tiles = tiles(width, height, queries, reach, budget);
            let mut seen = vec![0; width * height];
            for tile in &tiles {
                for y in tile.rows.clone() {
                    for x in tile.cols.clone() {
                        seen[y * width + x] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "{width}x{height} {tiles:?}");
            if width * height * queries * 4 <= budget {
                assert_eq!(tiles.len(), 1);
            } else {
                assert!(tiles.len() > 1);
            }
        }
    }

    #[test]
    fn tiled_refinement_equals_the_whole_image_refined_at_once() {
        let (width, height, queries) = (23, 19, 3);
        let planes: Vec<f32> = (0..queries * 9 * 11)
            .map(|i| ((i * 31) % 13) as f32 / 13.0)
            .collect();
        let canvas = QueryLogits::from_query_major(queries, 9, 11, &planes);
        let guide_pixels: Vec<f32> = (0..3 * 9 * 11)
            .map(|i| ((i * 29) % 17) as f32 / 8.0)
            .collect();
        let guide = Guide {
            pixels: &guide_pixels,
            width: 11,
            height: 9,
        };
        let pamr = Pamr {
            steps: 2,
            dilations: vec![1, 3],
        };
        let params = PostprocessParams {
            logit_scale: 30.0,
            prob_thd: 0.0,
            area_thd: Some(0.2),
        };
        let refiner = Refiner::new(&canvas, guide, &pamr, (width, height), &params);
        let whole = tiles(width, height, queries, pamr.reach(), usize::MAX);
        assert_eq!(whole.len(), 1);
        let expected = label_tiles(&refiner, &whole, &[0, 1, 1], 2, &params, true);
        for budget in [8 * 8 * queries * 4, 23 * 13 * queries * 4] {
            let split = tiles(width, height, queries, pamr.reach(), budget);
            assert!(split.len() > 1, "{budget}");
            let tiled = label_tiles(&refiner, &split, &[0, 1, 1], 2, &params, true);
            assert_eq!(tiled, expected, "{split:?}");
        }
    }
}
