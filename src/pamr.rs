//! Pixel-Adaptive Mask Refinement (Araslanov and Roth, CVPR 2020), as SCLIP applies it to the
//! full-resolution logits (spec section 7): each pixel's logits become, step after step, an
//! average of its neighbours' at a few dilations, weighted by how alike the image looks there.
//!
//! The weights depend on the image only and every step is linear in the logits, so a region
//! of the image can be refined on its own: values within `steps x max dilation` pixels of an
//! edge of the region that is not the image's own border are wrong, the rest are exact.
//! [`refine`] works on such regions, and the caller keeps only their exact interiors.

/// PAMR's settings: off with 0 steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pamr {
    pub steps: usize,
    /// The neighbours of a pixel are the 8 at each of these distances.
    pub dilations: Vec<usize>,
}

/// SCLIP's (and NACLIP's) dilations.
pub const DEFAULT_DILATIONS: [usize; 2] = [8, 16];

/// More steps than anyone refines with (the authors use 10, and 50 for pictures): a typo's
/// extra zeros would otherwise run for hours.
pub const MAX_STEPS: usize = 1000;

/// Neighbours farther apart than any image is wide are all the border pixel.
pub const MAX_DILATION: usize = 1 << 16;

impl Pamr {
    /// How far information travels in all the steps: the margin a region needs around the
    /// pixels it refines exactly.
    pub fn reach(&self) -> usize {
        self.steps
            .saturating_mul(self.dilations.iter().copied().max().unwrap_or(0))
    }

    /// The neighbours' offsets (dy, dx): for each dilation, the 3 x 3 grid around the pixel in
    /// raster order without its centre, as the reference's kernels are laid out.
    fn offsets(&self) -> Vec<(isize, isize)> {
        let mut offsets = Vec::with_capacity(8 * self.dilations.len());
        for &dilation in &self.dilations {
            let d = dilation as isize;
            for dy in [-d, 0, d] {
                for dx in [-d, 0, d] {
                    if (dy, dx) != (0, 0) {
                        offsets.push((dy, dx));
                    }
                }
            }
        }
        offsets
    }
}

/// A region of `height` x `width` pixels.
#[derive(Debug, Clone, Copy)]
pub struct RegionSize {
    pub height: usize,
    pub width: usize,
}

impl RegionSize {
    /// The pixel index of (y, x) moved by `offset`, clamped to the region (the reference pads
    /// the image by replicating its border).
    fn neighbour(&self, y: usize, x: usize, (dy, dx): (isize, isize)) -> usize {
        let clamp = |v: usize, d: isize, len: usize| v.saturating_add_signed(d).min(len - 1);
        clamp(y, dy, self.height) * self.width + clamp(x, dx, self.width)
    }
}

/// Refines `mask` (pixel-major: height x width x queries) with `pamr`, guided by `guide`
/// (channel-major: 3 x height x width, the normalised image at the mask's size).
pub fn refine(guide: &[f32], mask: Vec<f32>, size: RegionSize, pamr: &Pamr) -> Vec<f32> {
    use rayon::prelude::*;
    let pixels = size.height * size.width;
    assert_eq!(guide.len(), 3 * pixels, "three guide channels");
    assert!(
        pixels > 0 && mask.len().is_multiple_of(pixels),
        "a mask per pixel"
    );
    assert!(
        pamr.dilations.iter().all(|&d| d > 0),
        "dilations are positive"
    );
    let queries = mask.len() / pixels;
    let offsets = pamr.offsets();
    let weights = affinities(guide, size, pamr, &offsets);
    let neighbours = offsets.len();
    let mut current = mask;
    let mut next = vec![0.0f32; current.len()];
    for _ in 0..pamr.steps {
        next.par_chunks_mut(size.width * queries)
            .enumerate()
            .for_each(|(y, row)| {
                for (x, out) in row.chunks_exact_mut(queries).enumerate() {
                    let pixel = y * size.width + x;
                    out.fill(0.0);
                    let pixel_weights = &weights[pixel * neighbours..][..neighbours];
                    for (&offset, &weight) in offsets.iter().zip(pixel_weights) {
                        let from = size.neighbour(y, x, offset) * queries;
                        for (sum, &value) in out.iter_mut().zip(&current[from..from + queries]) {
                            *sum += weight * value;
                        }
                    }
                }
            });
        std::mem::swap(&mut current, &mut next);
    }
    current
}

/// Per pixel, the softmax over its neighbours j of the mean over the channels c of
/// -|I_c(p) - I_c(p + o_j)| / (1e-8 + 0.1 sigma_c(p)), sigma_c(p) the unbiased standard deviation
/// of I_c over the 3 x 3 grid of every dilation (the centre once per dilation).
fn affinities(
    guide: &[f32],
    size: RegionSize,
    pamr: &Pamr,
    offsets: &[(isize, isize)],
) -> Vec<f32> {
    use rayon::prelude::*;
    let pixels = size.height * size.width;
    let neighbours = offsets.len();
    // The standard deviation's sample: every offset, and the centre once per dilation.
    let mut sampled: Vec<(isize, isize)> = offsets.to_vec();
    sampled.extend(std::iter::repeat_n((0, 0), pamr.dilations.len()));
    let mut weights = vec![0.0f32; pixels * neighbours];
    weights
        .par_chunks_mut(size.width * neighbours)
        .enumerate()
        .for_each(|(y, row)| {
            let mut values = vec![0.0f32; sampled.len()];
            for (x, out) in row.chunks_exact_mut(neighbours).enumerate() {
                out.fill(0.0);
                for plane in guide.chunks_exact(pixels) {
                    let centre = plane[y * size.width + x];
                    for (value, &offset) in values.iter_mut().zip(&sampled) {
                        *value = plane[size.neighbour(y, x, offset)];
                    }
                    let scale = 1e-8 + 0.1 * unbiased_std(&values);
                    // The first `neighbours` sampled values are the neighbours, in order.
                    for (sum, &value) in out.iter_mut().zip(&values) {
                        *sum += -(centre - value).abs() / scale;
                    }
                }
                for sum in out.iter_mut() {
                    *sum /= 3.0;
                }
                softmax_in_place(out);
            }
        });
    weights
}

fn unbiased_std(values: &[f32]) -> f32 {
    let n = values.len() as f32;
    let mean = values.iter().sum::<f32>() / n;
    let squares: f32 = values.iter().map(|&v| (v - mean) * (v - mean)).sum();
    (squares / (n - 1.0)).sqrt()
}

fn softmax_in_place(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for value in values.iter_mut() {
        *value = (*value - max).exp();
        sum += *value;
    }
    for value in values.iter_mut() {
        *value /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pamr(steps: usize) -> Pamr {
        Pamr {
            steps,
            dilations: vec![1, 2],
        }
    }

    /// A guide with an edge down the middle: left half dark, right half bright, some texture.
    fn split_guide(size: RegionSize) -> Vec<f32> {
        let mut guide = Vec::new();
        for channel in 0..3 {
            for y in 0..size.height {
                for x in 0..size.width {
                    let side = if x < size.width / 2 { -1.0 } else { 1.0 };
                    let texture = ((x * 7 + y * 3 + channel) % 5) as f32 * 0.01;
                    guide.push(side + texture);
                }
            }
        }
        guide
    }

    #[test]
    fn weights_are_a_distribution_that_prefers_alike_neighbours() {
        let size = RegionSize {
            height: 6,
            width: 8,
        };
        let settings = pamr(1);
        let offsets = settings.offsets();
        assert_eq!(offsets.len(), 16);
        let weights = affinities(&split_guide(size), size, &settings, &offsets);
        for pixel in weights.chunks_exact(16) {
            let sum: f32 = pixel.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "{sum}");
        }
        // Pixel (2, 3) is the last dark column: its right neighbour (0, 1) is bright, its left
        // one (0, -1) dark.
        let pixel = &weights[(2 * 8 + 3) * 16..][..16];
        let left = offsets.iter().position(|&o| o == (0, -1)).unwrap();
        let right = offsets.iter().position(|&o| o == (0, 1)).unwrap();
        assert!(pixel[left] > 100.0 * pixel[right], "{pixel:?}");
    }

    #[test]
    fn a_constant_mask_stays_and_logits_do_not_cross_the_edge() {
        let size = RegionSize {
            height: 6,
            width: 8,
        };
        let guide = split_guide(size);
        let constant = refine(&guide, vec![0.25; 2 * 48], size, &pamr(3));
        assert!(constant.iter().all(|&v| (v - 0.25).abs() < 1e-6));
        // Query 0 is 1 on the dark half, query 1 on the bright half: refinement keeps them.
        let mut mask = Vec::new();
        for _y in 0..6 {
            for x in 0..8 {
                let dark = if x < 4 { 1.0 } else { 0.0 };
                mask.extend([dark, 1.0 - dark]);
            }
        }
        let refined = refine(&guide, mask.clone(), size, &pamr(5));
        for (before, after) in mask.iter().zip(&refined) {
            assert!((before - after).abs() < 1e-3, "{before} -> {after}");
        }
    }

    #[test]
    fn a_region_is_exact_beyond_its_reach_from_inner_edges() {
        let size = RegionSize {
            height: 20,
            width: 9,
        };
        let guide: Vec<f32> = (0..3 * 180).map(|i| ((i * 37) % 11) as f32 * 0.1).collect();
        let mask: Vec<f32> = (0..2 * 180).map(|i| ((i * 13) % 7) as f32).collect();
        let settings = pamr(2);
        let whole = refine(&guide, mask.clone(), size, &settings);
        // Rows 0..12 alone: the reach is 4, so rows 0..8 must match the whole image's.
        let rows = 12;
        let top = RegionSize {
            height: rows,
            width: 9,
        };
        let top_guide: Vec<f32> = guide
            .chunks_exact(180)
            .flat_map(|plane| plane[..rows * 9].iter().copied())
            .collect();
        let part = refine(&top_guide, mask[..rows * 9 * 2].to_vec(), top, &settings);
        let exact = (rows - settings.reach()) * 9 * 2;
        assert_eq!(part[..exact], whole[..exact]);
        assert_ne!(
            part[..rows * 18],
            whole[..rows * 18],
            "the edge rows differ"
        );
    }

    #[test]
    fn reach_is_steps_times_the_largest_dilation() {
        let settings = Pamr {
            steps: 10,
            dilations: DEFAULT_DILATIONS.to_vec(),
        };
        assert_eq!(settings.reach(), 160);
    }
}
