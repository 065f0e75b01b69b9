//! One-dimensional interpolation taps that reproduce PyTorch's CPU `F.interpolate`
//! (align_corners = false, no antialiasing), applied separably: along x first, then y.
//!
//! The reference results come from PyTorch's x86-64 build, whose compiler fuses some of the
//! multiply-adds of these kernels; the fused steps are reproduced with `fused_mul_add` so
//! that our values agree with PyTorch's bit for bit rather than to a few ulps.

/// `a * b + c` with a single rounding, as the FMA instruction that PyTorch's kernels compile to.
///
/// The product of two f32 values is exact in f64, so only the sum is rounded twice (to f64,
/// then to f32); that differs from a true FMA only when the f64 sum lands exactly on an f32
/// rounding midpoint, which is vanishingly rare. Unlike `f32::mul_add` this needs no FMA
/// target feature to stay fast, and it vectorises.
#[inline(always)]
fn fused_mul_add(a: f32, b: f32, c: f32) -> f32 {
    (f64::from(a) * f64::from(b) + f64::from(c)) as f32
}

/// One output index's two taps for bilinear, align_corners=False, no antialias, as PyTorch's
/// CPU upsample computes them when only `size` is given:
/// scale = in as f32 / out as f32; src = max(scale*(dst+0.5)-0.5, 0); i0 = floor;
/// i1 = i0 + (i0 < in-1); l1 = src - i0; l0 = 1 - l1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearTap {
    pub i0: usize,
    pub i1: usize,
    pub w0: f32,
    pub w1: f32,
}

impl LinearTap {
    /// `w0 * v0 + w1 * v1` rounded as PyTorch's generic upsample kernel rounds it (the second
    /// product first, then one fused multiply-add). For two dimensions, apply the x taps to
    /// each of the two rows and then the y tap to those two results.
    #[inline(always)]
    pub fn apply(&self, v0: f32, v1: f32) -> f32 {
        fused_mul_add(v0, self.w0, v1 * self.w1)
    }
}

/// The taps of every output index, for resizing an axis of `in_size` to `out_size`.
pub fn linear_taps(in_size: usize, out_size: usize) -> Vec<LinearTap> {
    assert!(in_size > 0, "cannot interpolate from an empty axis");
    let scale = in_size as f32 / out_size as f32;
    let last = in_size - 1;
    (0..out_size)
        .map(|dst| {
            // Unfused on purpose: PyTorch's generic kernel computes its source indices without FMA.
            let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(last);
            let w1 = (src - i0 as f32).clamp(0.0, 1.0);
            LinearTap {
                i0,
                i1: if i0 < last { i0 + 1 } else { i0 },
                w0: 1.0 - w1,
                w1,
            }
        })
        .collect()
}

/// Bicubic taps (a = -0.75, indices clamped to 0..in-1) for
/// F.interpolate(mode='bicubic', align_corners=False, scale_factor=f) with a GIVEN scale factor:
/// src = (dst + 0.5) * (1/f as f64 rounded to f32) - 0.5 in f32, the multiply-add fused as in
/// PyTorch's build (spec section 4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CubicTap {
    pub idx: [usize; 4],
    pub w: [f32; 4],
}

impl CubicTap {
    /// The weighted sum of the four tapped values, in PyTorch's rounding order: the second
    /// product first, then fused multiply-adds of the first, third and fourth.
    #[inline(always)]
    pub fn apply(&self, v: [f32; 4]) -> f32 {
        let w = &self.w;
        let sum = fused_mul_add(v[0], w[0], v[1] * w[1]);
        let sum = fused_mul_add(v[2], w[2], sum);
        fused_mul_add(v[3], w[3], sum)
    }
}

const CUBIC_A: f32 = -0.75;

/// Keys' kernel for |x| <= 1, with PyTorch's (compiled) rounding: the innermost step fused.
fn cubic_near(x: f32) -> f32 {
    fused_mul_add(CUBIC_A + 2.0, x, -(CUBIC_A + 3.0)) * x * x + 1.0
}

/// Keys' kernel for 1 < |x| < 2, with PyTorch's (compiled) rounding: the two inner steps fused.
fn cubic_far(x: f32) -> f32 {
    let inner = fused_mul_add(CUBIC_A, x, -5.0 * CUBIC_A);
    fused_mul_add(inner, x, 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A
}

/// The taps of every output index, for an axis of `in_size` resized by `scale_factor` to
/// `out_size` (which the caller derives from the factor, as PyTorch floors in * factor).
pub fn cubic_taps_for_scale(in_size: usize, out_size: usize, scale_factor: f64) -> Vec<CubicTap> {
    assert!(in_size > 0, "cannot interpolate from an empty axis");
    assert!(scale_factor > 0.0, "scale factor must be positive");
    let step = (1.0 / scale_factor) as f32;
    let last = in_size as isize - 1;
    (0..out_size)
        .map(|dst| {
            // Bicubic keeps negative source positions (no clamp at 0), and its index
            // computation is compiled with FMA, unlike the bilinear one.
            let src = fused_mul_add(step, dst as f32 + 0.5, -0.5);
            let base = (src.floor() as isize).min(last);
            let t = (src - base as f32).clamp(0.0, 1.0);
            let t_rev = 1.0 - t;
            CubicTap {
                idx: std::array::from_fn(|j| (base - 1 + j as isize).clamp(0, last) as usize),
                w: [
                    cubic_far(t + 1.0),
                    cubic_near(t),
                    cubic_near(t_rev),
                    cubic_far(t_rev + 1.0),
                ],
            }
        })
        .collect()
}

/// Resizes a rows x cols x dim grid of vectors bicubically, as SCLIP resizes the patch position
/// embeddings for a gh x gw patch grid: PyTorch's bicubic interpolate with scale factors
/// ((out_h + 0.1) / grid_h, (out_w + 0.1) / grid_w), so the source positions follow those factors
/// rather than the plain size ratio. Callers keep the grid unchanged when the sizes already match
/// (the reference skips interpolation then). Returns out_h x out_w x dim.
pub fn resize_position_grid(
    grid: &[f32],
    grid_h: usize,
    grid_w: usize,
    dim: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert!(dim > 0, "position vectors cannot be empty");
    assert_eq!(
        grid.len(),
        grid_h * grid_w * dim,
        "grid is not {grid_h} x {grid_w} x {dim}"
    );
    let factor = |out: usize, input: usize| (out as f64 + 0.1) / input as f64;
    let taps_y = cubic_taps_for_scale(grid_h, out_h, factor(out_h, grid_h));
    let taps_x = cubic_taps_for_scale(grid_w, out_w, factor(out_w, grid_w));
    let vector = |row: usize, col: usize| &grid[(row * grid_w + col) * dim..][..dim];

    let mut out = vec![0.0f32; out_h * out_w * dim];
    let positions = taps_y
        .iter()
        .flat_map(|tap_y| taps_x.iter().map(move |tap_x| (tap_y, tap_x)));
    for ((tap_y, tap_x), out_vector) in positions.zip(out.chunks_exact_mut(dim)) {
        let rows = tap_y.idx.map(|row| tap_x.idx.map(|col| vector(row, col)));
        for (d, value) in out_vector.iter_mut().enumerate() {
            // Along x within each of the four rows, then along y, as PyTorch nests them.
            let across = rows.map(|cols| tap_x.apply(cols.map(|v| v[d])));
            *value = tap_y.apply(across);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_close, pattern};

    fn taps_as_tuples(taps: &[LinearTap]) -> Vec<(usize, usize, f32, f32)> {
        taps.iter().map(|t| (t.i0, t.i1, t.w0, t.w1)).collect()
    }

    #[test]
    fn linear_taps_upscale_match_pytorch() {
        // PyTorch's weights for 5 -> 13 (read off by interpolating one-hot rows; where a weight
        // is 0 its index is not observable). At the right edge both taps read the last element.
        #[rustfmt::skip]
        let expected = [
            (0, 1, 1.0, 0.0), (0, 1, 0.9230769, 0.07692307), (0, 1, 0.5384615, 0.4615385),
            (0, 1, 0.15384614, 0.84615386), (1, 2, 0.7692307, 0.23076928),
            (1, 2, 0.38461542, 0.6153846), (2, 3, 1.0, 0.0), (2, 3, 0.6153846, 0.38461542),
            (2, 3, 0.23076916, 0.76923084), (3, 4, 0.84615374, 0.15384626),
            (3, 4, 0.4615383, 0.5384617), (3, 4, 0.07692289, 0.9230771),
            (4, 4, 0.6923075, 0.30769253),
        ];
        assert_eq!(taps_as_tuples(&linear_taps(5, 13)), expected);
    }

    #[test]
    fn linear_taps_downscale_match_pytorch() {
        // No antialiasing: shrinking 13 -> 5 still reads only two neighbours per output.
        #[rustfmt::skip]
        let expected = [
            (0, 1, 0.20000005, 0.79999995), (3, 4, 0.60000014, 0.39999986), (6, 7, 1.0, 0.0),
            (8, 9, 0.40000057, 0.5999994), (11, 12, 0.8000002, 0.19999981),
        ];
        assert_eq!(taps_as_tuples(&linear_taps(13, 5)), expected);
    }

    #[test]
    fn linear_taps_identity_size_copies() {
        for (i, tap) in linear_taps(6, 6).iter().enumerate() {
            assert_eq!((tap.i0, tap.w0, tap.w1), (i, 1.0, 0.0));
        }
    }

    // F.interpolate(pattern(n, 13), size, mode='bilinear', align_corners=False) along one axis.
    #[rustfmt::skip]
    const LINEAR_5_TO_13: [f32; 13] = [
        -0.487, -0.4163077, -0.06284613, 0.29061538, 0.41330767, 0.38215384, 0.351, 0.31984615,
        0.2886923, 0.25753844, 0.2263846, 0.19523077, 0.18900001,
    ];

    #[rustfmt::skip]
    const LINEAR_13_TO_5: [f32; 5] = [
        0.24819995, 0.2376, 0.02700001, -0.18359995, -0.39419997,
    ];

    #[rustfmt::skip]
    const LINEAR_7_TO_3: [f32; 3] = [
        0.1256666, 0.26999998, 0.081000015,
    ];

    #[rustfmt::skip]
    const LINEAR_4_TO_9: [f32; 9] = [
        -0.487, -0.3338333, 0.07461114, 0.42749998, 0.3915, 0.3555, 0.3195, 0.2835,
        0.26999998,
    ];

    #[test]
    fn linear_interpolation_matches_pytorch() {
        let cases: [(usize, &[f32]); 4] = [
            (5, &LINEAR_5_TO_13),
            (13, &LINEAR_13_TO_5),
            (7, &LINEAR_7_TO_3),
            (4, &LINEAR_4_TO_9),
        ];
        for (in_size, expected) in cases {
            let input = pattern(in_size, 13);
            let actual: Vec<f32> = linear_taps(in_size, expected.len())
                .iter()
                .map(|t| t.apply(input[t.i0], input[t.i1]))
                .collect();
            assert_close(&actual, expected, 1e-7);
        }
    }

    #[test]
    fn cubic_taps_use_the_given_scale_factor() {
        // 14 -> 3 with factor 3.1/14: the source step is 14/3.1, not 14/3.
        let taps = cubic_taps_for_scale(14, 3, 3.1 / 14.0);
        let step = (14.0f64 / 3.1) as f32;
        let first_source = 0.5 * step - 0.5;
        assert_eq!(taps[0].idx, [0, 1, 2, 3]);
        let t = first_source - 1.0;
        let keys = |x: f32| {
            let x = x.abs();
            if x <= 1.0 {
                (1.25 * x - 2.25) * x * x + 1.0
            } else {
                ((-0.75 * x + 3.75) * x - 6.0) * x + 3.0
            }
        };
        let expected = [keys(t + 1.0), keys(t), keys(1.0 - t), keys(2.0 - t)];
        for (w, e) in taps[0].w.iter().zip(expected) {
            assert!((w - e).abs() < 1e-6, "{w} vs {e}");
        }
        // The first source position is negative (-0.15): floor -1, so three taps clamp to 0.
        let start = cubic_taps_for_scale(14, 20, 20.1 / 14.0);
        assert_eq!(start[0].idx, [0, 0, 0, 1]);
        assert_eq!(start[19].idx[3], 13);
        for tap in &start {
            assert!((tap.w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    // F.interpolate(pattern(G * G * D, offset) as 1 x D x G x G,
    //               scale_factor=((gh + 0.1) / G, (gw + 0.1) / G), mode='bicubic'), as gh x gw x D.
    #[rustfmt::skip]
    const BICUBIC_14_TO_3X9X3: [f32; 81] = [
        -0.06874119, -0.17481592, -0.26580933, 0.19179298, 0.11153847, 0.27320382, 0.04958235, -0.09637435,
        -0.28686076, -0.49714527, 0.27953744, 0.19945854, 0.26435602, 0.089782804, -0.03985232, -0.15493979,
        -0.259569, -0.3769713, -0.15419002, 0.290874, 0.22276956, 0.19269308, 0.110747844, -0.07521703,
        -0.33359128, 0.10488202, 0.015613319, 0.05230287, -0.11032272, -0.22535355, -0.26269218, -0.34126523,
        0.37453052, 0.36445114, 0.22427589, 0.016187394, -0.23844521, -0.046329577, -0.18497747, 0.0645106,
        -0.03900678, 0.45260012, 0.13163768, -0.06514716, -0.14832987, -0.30385473, -0.2009373, -0.27810046,
        0.43328455, 0.3519724, 0.22682203, -0.086864226, 0.0037200563, -0.12731662, 0.0047610686, 0.08325747,
        -0.0339979, -0.39318737, -0.47892964, 0.28484797, 0.2990539, 0.30008143, 0.117792346, -0.04705595,
        -0.1059164, -0.24871774, -0.07718275, -0.17457739, 0.3758735, 0.090830065, 0.22344255, 0.14146842,
        -0.19866319, -0.35782942, -0.43882945, 0.3636275, 0.28273228, 0.2082932, 0.07282596, -0.06576438,
        -0.042799156,
    ];

    #[rustfmt::skip]
    const BICUBIC_14_TO_10X13X2: [f32; 260] = [
        -0.32318044, 0.4045357, 0.35673475, 0.22423355, 0.13073544, 0.04597405, -0.054127026, -0.15514362,
        -0.18466711, -0.30431604, -0.25131628, 0.025051648, -0.02207385, 0.4474588, 0.3482978, 0.19403301,
        0.1048131, 0.008008501, -0.10480378, -0.19458109, -0.12088357, -0.20093599, -0.31997514, -0.4009751,
        0.30172712, 0.2207271, 0.18173149, 0.022951797, -0.08744362, -0.27211562, -0.37640604, -0.3322143,
        -0.39305001, 0.14237837, 0.21294245, 0.058870383, 0.3706589, 0.25657418, 0.11630449, -0.015663138,
        -0.1676501, -0.30872348, -0.46417868, -0.058462624, -0.14175715, 0.047547948, 0.36226237, 0.25208256,
        0.30596983, 0.2249698, 0.03140777, -0.049592238, -0.29078865, -0.34437874, -0.38591617, 0.5077684,
        0.4398244, 0.27531692, 0.18499717, 0.12860997, 0.03865951, -0.04541026, -0.14630547, -0.22730546,
        -0.41728395, -0.49828398, 0.01318694, -0.07049058, 0.39694393, 0.3353775, 0.17214425, 0.101936996,
        0.01019278, -0.06933853, -0.16138159, -0.26448038, -0.37159514, -0.45579973, 0.46051747, 0.37647042,
        0.27099717, 0.081626035, -0.02437445, -0.10280924, -0.25824317, -0.24070185, -0.33552492, -0.09217171,
        0.13790554, 0.013616593, 0.50692904, 0.425929, 0.19620402, 0.115203984, -0.077676475, -0.20066932,
        -0.31182638, -0.084629506, -0.14254563, -0.19020982, -0.27990043, 0.33710858, 0.28312844, 0.30484232,
        -0.0033846386, -0.084384635, -0.3009204, -0.38192034, -0.3340424, -0.42012694, 0.31276184, 0.30104372,
        0.1415857, 0.28863007, 0.18245228, 0.07814992, -0.03788564, -0.17485343, -0.3523373, -0.4947539,
        0.016712923, -0.08569487, 0.22658294, 0.36226827, 0.24093533, 0.24686705, 0.15051582, 0.038044173,
        -0.080536224, -0.26085135, -0.26614323, -0.3471432, 0.5562206, 0.47522056, 0.3103836, 0.22938356,
        0.06666721, -0.018068831, -0.112587355, -0.15521438, -0.23580246, -0.2966483, -0.4027068, 0.0106175775,
        0.0028578152, 0.4770765, 0.32496515, 0.17059238, 0.039818488, -0.0411815, -0.14358073, -0.22458075,
        -0.21102239, -0.38714722, -0.37501207, 0.39626324, 0.33424583, 0.25332755, 0.05934206, -0.030436145,
        -0.13568042, -0.30651122, -0.25762773, -0.34781227, 0.09384154, 0.20930119, 0.09537801, 0.45382088,
        0.36156008, 0.18088122, 0.085729875, -0.1066125, -0.26659358, -0.38665965, -0.0038494756, -0.079205886,
        -0.0071737487, -0.08817376, 0.33073175, 0.2587594, 0.25959903, 0.09771534, -0.119093455, -0.20092855,
        -0.37136483, -0.36261725, -0.39193416, 0.44548672, 0.3903675, 0.20795007, 0.19995144, 0.116494305,
        0.019677166, -0.06674246, -0.18802156, -0.34915468, -0.49270388, 0.025930885, 0.0075325845, 0.39713204,
        0.36296594, 0.22426684, 0.16904405, 0.088044085, -0.007947326, -0.0889473, -0.25719523, -0.3381952,
        -0.22790028, -0.30880708, 0.47152779, 0.38081774, 0.22781299, 0.037164878, -0.059718523, -0.17738791,
        -0.2737507, -0.24750602, -0.37160048, -0.22651836, 0.111765094, 0.008710222, 0.47335514, 0.32543266,
        0.15506983, 0.021548346, -0.099733554, -0.20791516, -0.3137177, -0.13646397, -0.2882759, -0.3050492,
        0.41634694, 0.33145493, 0.1636129, 0.08261289, -0.07395403, -0.15986207, -0.25786427, -0.2243233,
        -0.26961422, 0.24679737, 0.15418638, 0.12171848, 0.06272606, 0.25644997, 0.13628128, 0.0175128,
        -0.10774926, -0.18874931, -0.3462829, -0.42728293, 0.016241763, -0.105613, 0.060247287, 0.29306445,
        0.20404623, 0.20109133, 0.036702793, -0.049026534,
    ];

    #[rustfmt::skip]
    const BICUBIC_7_TO_5X3X4: [f32; 60] = [
        0.017363757, 0.2344417, 0.1332212, 0.03625071, -0.34739858, 0.3865899, 0.32432443, 0.24491519,
        -0.19979222, -0.17765747, -0.082989514, -0.1623048, -0.17410657, -0.28414038, -0.42189142, -0.034819268,
        0.23862961, 0.07824696, 0.049827546, -0.08145626, 0.1072586, 0.016212923, 0.42824414, 0.29398808,
        0.15924017, 0.07824014, -0.0023976674, 0.31272867, -0.28270558, -0.36370555, -0.4450411, -0.53040767,
        0.06761525, -0.018883048, -0.10302962, -0.18865442, 0.23103367, 0.11354982, -0.0038179003, -0.12412613,
        0.44561192, 0.39841467, 0.3210371, 0.2400371, -0.33749115, 0.00034033708, -0.07682319, -0.15782326,
        -0.26631498, -0.38665238, 0.05708956, -0.023910496, 0.037891567, -0.0066618156, -0.13992709, -0.22092709,
        0.0927617, 0.34697044, 0.21061581, 0.12961575,
    ];

    #[rustfmt::skip]
    const BICUBIC_14_TO_1X14X2: [f32; 28] = [
        -0.030348474, -0.111348435, -0.266073, -0.34707296, -0.43937835, -0.52037835, 0.355622, 0.27237362,
        0.21144666, 0.25715634, 0.1766547, 0.09965041, 0.008352094, -0.07044109, -0.15001154, -0.306822,
        -0.4241916, -0.5090354, 0.359444, 0.27310452, 0.24851131, 0.29298794, 0.2089902, 0.13756114,
        0.0581602, -0.0311519, -0.12436674, -0.2766972,
    ];

    struct GridCase {
        grid: usize,
        out_h: usize,
        out_w: usize,
        dim: usize,
        offset: usize,
        expected: &'static [f32],
    }

    #[test]
    fn position_grid_resize_matches_pytorch() {
        let cases = [
            GridCase {
                grid: 14,
                out_h: 3,
                out_w: 9,
                dim: 3,
                offset: 30,
                expected: &BICUBIC_14_TO_3X9X3,
            },
            GridCase {
                grid: 14,
                out_h: 10,
                out_w: 13,
                dim: 2,
                offset: 29,
                expected: &BICUBIC_14_TO_10X13X2,
            },
            // ViT-B/32's 7 x 7 grid.
            GridCase {
                grid: 7,
                out_h: 5,
                out_w: 3,
                dim: 4,
                offset: 24,
                expected: &BICUBIC_7_TO_5X3X4,
            },
            // A one-row grid: every output row reads clamped rows.
            GridCase {
                grid: 14,
                out_h: 1,
                out_w: 14,
                dim: 2,
                offset: 29,
                expected: &BICUBIC_14_TO_1X14X2,
            },
        ];
        for case in cases {
            let input = pattern(case.grid * case.grid * case.dim, case.offset);
            let actual = resize_position_grid(
                &input, case.grid, case.grid, case.dim, case.out_h, case.out_w,
            );
            assert_close(&actual, case.expected, 1e-6);
        }
    }
}
