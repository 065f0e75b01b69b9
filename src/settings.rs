//! How an image is segmented, apart from the model and the classes: the resize, the sliding
//! window, the batch, the post-processing and the method (its last block). The defaults are the paper's
//! (spec sections 3-5); a benchmark [`Preset`] sets its own resize and post-processing, and
//! [`Overrides`] set any field over both.

use crate::methods::{CsaProjection, Method, ProjectionNotSclip};
use crate::pamr::{Pamr, DEFAULT_DILATIONS, MAX_DILATION, MAX_STEPS};
use crate::postprocess::PostprocessParams;
use crate::presets::Preset;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The resized image's short side (before the 2048 long-side cap).
    pub short_side: u32,
    /// The sliding window's side, in pixels of the resized image.
    pub window: usize,
    pub stride: usize,
    /// Windows per forward pass, taken across images when a stream has several.
    pub batch_size: usize,
    pub postprocess: PostprocessParams,
    /// Refine the logits at the original size before the softmax (spec section 7).
    pub pamr: Option<Pamr>,
    /// Keep the final per-class scores in each [`Segmentation`](crate::Segmentation).
    pub keep_probs: bool,
    /// What the vision tower's last block computes.
    pub method: Method,
    /// SCLIP's attention maps (with [`Method::Sclip`] only).
    pub csa_projection: CsaProjection,
}

impl Settings {
    /// SCLIP's defaults: short side 336, 224-pixel windows at stride 112, logit scale 40, no
    /// thresholds, Correlative Self-Attention.
    pub const DEFAULT: Settings = Settings {
        short_side: 336,
        window: 224,
        stride: 112,
        batch_size: 8,
        postprocess: PostprocessParams {
            logit_scale: 40.0,
            prob_thd: 0.0,
            area_thd: None,
        },
        pamr: None,
        keep_probs: false,
        method: Method::Sclip,
        csa_projection: CsaProjection::QueryKey,
    };

    /// The defaults with `preset`'s settings for the method, if given, and then every override
    /// that is set; checked with [`Settings::validate`].
    pub fn resolve(
        preset: Option<&Preset>,
        overrides: &Overrides,
    ) -> Result<Settings, SettingsError> {
        let mut settings = Settings::DEFAULT;
        let method = overrides.method.unwrap_or(settings.method);
        let mut preset_pamr_steps = None;
        if let Some(preset) = preset {
            let tuning = preset.tuning(method);
            settings.short_side = tuning.short_side;
            settings.window = tuning.window;
            settings.stride = tuning.stride;
            settings.postprocess = PostprocessParams {
                logit_scale: tuning.logit_scale,
                prob_thd: tuning.prob_thd,
                area_thd: tuning.area_thd,
            };
            preset_pamr_steps = Some(tuning.pamr_steps);
        }
        let Overrides {
            short_side,
            window,
            stride,
            batch_size,
            logit_scale,
            prob_thd,
            area_thd,
            keep_probs,
            method: _,
            csa_projection,
            pamr_steps,
            ref pamr_dilations,
        } = *overrides;
        let post = &mut settings.postprocess;
        post.logit_scale = logit_scale.unwrap_or(post.logit_scale);
        post.prob_thd = prob_thd.unwrap_or(post.prob_thd);
        post.area_thd = area_thd.or(post.area_thd);
        settings.short_side = short_side.unwrap_or(settings.short_side);
        settings.window = window.unwrap_or(settings.window);
        settings.stride = stride.unwrap_or(settings.stride);
        settings.batch_size = batch_size.unwrap_or(settings.batch_size);
        settings.keep_probs = keep_probs.unwrap_or(settings.keep_probs);
        settings.method = method;
        settings.csa_projection = csa_projection.unwrap_or(settings.csa_projection);
        let steps = pamr_steps.or(preset_pamr_steps).unwrap_or(0);
        if steps == 0 && pamr_dilations.is_some() {
            return Err(SettingsError::PamrOff);
        }
        settings.pamr = (steps > 0).then(|| Pamr {
            steps,
            dilations: pamr_dilations
                .clone()
                .unwrap_or_else(|| DEFAULT_DILATIONS.to_vec()),
        });
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what needs no model, so that a mistyped setting fails before any download.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.short_side == 0 {
            return Err(SettingsError::NotPositive(Setting::ShortSide));
        }
        if self.stride == 0 || self.stride > self.window {
            return Err(SettingsError::StrideOutsideWindow {
                stride: self.stride,
                window: self.window,
            });
        }
        if self.batch_size == 0 {
            return Err(SettingsError::NotPositive(Setting::BatchSize));
        }
        let post = &self.postprocess;
        if !post.logit_scale.is_finite() {
            return Err(SettingsError::NotFinite(Setting::LogitScale));
        }
        // A scale of 0 makes every class equally likely and a negative one picks the least likely.
        if post.logit_scale <= 0.0 {
            return Err(SettingsError::NotPositive(Setting::LogitScale));
        }
        // `contains` is false for NaN, so this also refuses it.
        if !(0.0..=1.0).contains(&post.prob_thd) {
            return Err(SettingsError::NotAFraction(Setting::ProbThd));
        }
        if let Some(area) = self.postprocess.area_thd {
            if !(0.0..=1.0).contains(&area) {
                return Err(SettingsError::NotAFraction(Setting::AreaThd));
            }
        }
        if let Some(pamr) = &self.pamr {
            if pamr.dilations.is_empty() || pamr.dilations.contains(&0) {
                return Err(SettingsError::NotPositive(Setting::PamrDilations));
            }
            if pamr.steps > MAX_STEPS {
                return Err(SettingsError::AboveLimit {
                    setting: Setting::PamrSteps,
                    value: pamr.steps,
                    limit: MAX_STEPS,
                });
            }
            if let Some(&value) = pamr.dilations.iter().find(|&&d| d > MAX_DILATION) {
                return Err(SettingsError::AboveLimit {
                    setting: Setting::PamrDilations,
                    value,
                    limit: MAX_DILATION,
                });
            }
        }
        self.method
            .last_block(self.csa_projection)
            .map_err(SettingsError::ProjectionNotSclip)?;
        Ok(())
    }

    /// Checks what depends on the model: a window, and the resized image's short side, must hold
    /// at least one `patch`-pixel patch.
    pub fn validate_for_patch(&self, patch: usize) -> Result<(), SettingsError> {
        for (setting, value) in [
            (Setting::Window, self.window),
            (Setting::ShortSide, self.short_side as usize),
        ] {
            if value < patch {
                return Err(SettingsError::BelowPatch {
                    setting,
                    value,
                    patch,
                });
            }
        }
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::DEFAULT
    }
}

/// Settings given explicitly, which win over a preset's and the defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub short_side: Option<u32>,
    pub window: Option<usize>,
    pub stride: Option<usize>,
    pub batch_size: Option<usize>,
    pub logit_scale: Option<f32>,
    pub prob_thd: Option<f32>,
    pub area_thd: Option<f32>,
    pub keep_probs: Option<bool>,
    pub method: Option<Method>,
    pub csa_projection: Option<CsaProjection>,
    /// PAMR's steps (0 turns it off).
    pub pamr_steps: Option<usize>,
    /// PAMR's dilations [default: 8 and 16]; only with steps.
    pub pamr_dilations: Option<Vec<usize>>,
}

/// A field of [`Settings`], as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    ShortSide,
    Window,
    Stride,
    BatchSize,
    LogitScale,
    ProbThd,
    AreaThd,
    CsaProjection,
    PamrSteps,
    PamrDilations,
}

impl Setting {
    /// The field's name in [`Settings`] (post-processing fields without their prefix).
    pub fn name(self) -> &'static str {
        match self {
            Setting::ShortSide => "short_side",
            Setting::Window => "window",
            Setting::Stride => "stride",
            Setting::BatchSize => "batch_size",
            Setting::LogitScale => "logit_scale",
            Setting::ProbThd => "prob_thd",
            Setting::AreaThd => "area_thd",
            Setting::CsaProjection => "csa_projection",
            Setting::PamrSteps => "pamr_steps",
            Setting::PamrDilations => "pamr_dilations",
        }
    }
}

/// Settings that cannot work, each naming the field at fault.
#[derive(Debug, Clone, PartialEq)]
pub enum SettingsError {
    NotPositive(Setting),
    /// A stride of 0, or longer than the window, which would leave pixels no window sees.
    StrideOutsideWindow {
        stride: usize,
        window: usize,
    },
    NotFinite(Setting),
    /// Outside 0..=1.
    NotAFraction(Setting),
    /// The window or the short side is smaller than one of the model's patches.
    BelowPatch {
        setting: Setting,
        value: usize,
        patch: usize,
    },
    ProjectionNotSclip(ProjectionNotSclip),
    /// PAMR's dilations were given, but PAMR is off.
    PamrOff,
    AboveLimit {
        setting: Setting,
        value: usize,
        limit: usize,
    },
}

impl SettingsError {
    /// The field whose value is at fault.
    pub fn setting(&self) -> Setting {
        match *self {
            SettingsError::NotPositive(setting)
            | SettingsError::NotFinite(setting)
            | SettingsError::NotAFraction(setting)
            | SettingsError::BelowPatch { setting, .. }
            | SettingsError::AboveLimit { setting, .. } => setting,
            SettingsError::StrideOutsideWindow { .. } => Setting::Stride,
            SettingsError::ProjectionNotSclip(_) => Setting::CsaProjection,
            SettingsError::PamrOff => Setting::PamrDilations,
        }
    }
}

impl std::fmt::Display for SettingsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.setting().name();
        match self {
            SettingsError::NotPositive(_) => write!(f, "{name} must be positive"),
            SettingsError::StrideOutsideWindow { stride, window } => write!(
                f,
                "stride {stride} must be between 1 and the window, {window}: a longer stride \
                 leaves pixels no window sees"
            ),
            SettingsError::NotFinite(_) => write!(f, "{name} must be a finite number"),
            SettingsError::NotAFraction(_) => write!(f, "{name} must be between 0 and 1"),
            SettingsError::BelowPatch { value, patch, .. } => write!(
                f,
                "{name} {value} is smaller than the model's {patch}-pixel patch"
            ),
            SettingsError::ProjectionNotSclip(error) => error.fmt(f),
            SettingsError::PamrOff => write!(f, "{name} needs PAMR: give it at least one step"),
            SettingsError::AboveLimit { value, limit, .. } => {
                write!(f, "{name} {value} is over the limit of {limit}")
            }
        }
    }
}

impl std::error::Error for SettingsError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets;

    #[test]
    fn a_preset_applies_under_explicit_overrides() {
        let voc21 = presets::find("voc21").unwrap();
        let settings = Settings::resolve(Some(voc21), &Overrides::default()).unwrap();
        assert_eq!(settings.postprocess.logit_scale, 65.0);
        assert_eq!(settings.postprocess.area_thd, Some(0.1));
        assert_eq!(settings.window, Settings::DEFAULT.window);
        let overrides = Overrides {
            logit_scale: Some(50.0),
            short_side: Some(448),
            keep_probs: Some(true),
            ..Overrides::default()
        };
        let settings = Settings::resolve(Some(voc21), &overrides).unwrap();
        assert_eq!(settings.postprocess.logit_scale, 50.0);
        assert_eq!(settings.postprocess.prob_thd, 0.1);
        assert_eq!(settings.short_side, 448);
        assert!(settings.keep_probs);
        assert_eq!(
            Settings::resolve(None, &Overrides::default()).unwrap(),
            Settings::DEFAULT
        );
    }

    #[test]
    fn a_preset_gives_each_method_its_authors_settings_and_pamr() {
        let voc21 = presets::find("voc21").unwrap();
        let with = |overrides: Overrides| Settings::resolve(Some(voc21), &overrides).unwrap();
        let naclip = with(Overrides {
            method: Some(Method::NaClip),
            ..Overrides::default()
        });
        assert_eq!(naclip.postprocess.logit_scale, 40.0);
        assert_eq!(naclip.postprocess.area_thd, None);
        assert_eq!(
            naclip.pamr,
            Some(Pamr {
                steps: 10,
                dilations: vec![8, 16]
            })
        );
        let clear = with(Overrides {
            method: Some(Method::ClearClip),
            window: Some(224),
            ..Overrides::default()
        });
        assert_eq!(
            (clear.short_side, clear.window, clear.stride),
            (448, 224, 224)
        );
        assert_eq!(clear.postprocess.prob_thd, 0.5);
        assert_eq!(clear.pamr, None);
        let naclip_without_pamr = with(Overrides {
            method: Some(Method::NaClip),
            pamr_steps: Some(0),
            ..Overrides::default()
        });
        assert_eq!(naclip_without_pamr.pamr, None);
        let sclip_with_pamr = with(Overrides {
            pamr_steps: Some(3),
            pamr_dilations: Some(vec![2]),
            ..Overrides::default()
        });
        assert_eq!(
            sclip_with_pamr.pamr,
            Some(Pamr {
                steps: 3,
                dilations: vec![2]
            })
        );
        let no_preset = Settings::resolve(
            None,
            &Overrides {
                method: Some(Method::NaClip),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(no_preset.pamr, None, "PAMR only from a preset or --pamr");
    }

    #[test]
    fn impossible_settings_name_their_field() {
        let refused = |overrides: Overrides| Settings::resolve(None, &overrides).unwrap_err();
        let error = refused(Overrides {
            stride: Some(300),
            ..Overrides::default()
        });
        assert_eq!(
            error,
            SettingsError::StrideOutsideWindow {
                stride: 300,
                window: 224
            }
        );
        assert_eq!(error.setting(), Setting::Stride);
        let error = refused(Overrides {
            short_side: Some(0),
            ..Overrides::default()
        });
        assert_eq!(error.to_string(), "short_side must be positive");
        let error = refused(Overrides {
            logit_scale: Some(f32::NAN),
            ..Overrides::default()
        });
        assert_eq!(error.setting(), Setting::LogitScale);
        let error = refused(Overrides {
            area_thd: Some(1.5),
            ..Overrides::default()
        });
        assert_eq!(error, SettingsError::NotAFraction(Setting::AreaThd));
        let error = refused(Overrides {
            pamr_dilations: Some(vec![8]),
            ..Overrides::default()
        });
        assert_eq!(error, SettingsError::PamrOff);
        let error = refused(Overrides {
            pamr_steps: Some(10_000),
            ..Overrides::default()
        });
        assert_eq!(
            error.to_string(),
            "pamr_steps 10000 is over the limit of 1000"
        );
        let error = refused(Overrides {
            pamr_steps: Some(1),
            pamr_dilations: Some(vec![8, usize::MAX]),
            ..Overrides::default()
        });
        assert_eq!(error.setting(), Setting::PamrDilations);
        for dilations in [vec![], vec![8, 0]] {
            let error = refused(Overrides {
                pamr_steps: Some(1),
                pamr_dilations: Some(dilations),
                ..Overrides::default()
            });
            assert_eq!(error, SettingsError::NotPositive(Setting::PamrDilations));
        }
        let error = refused(Overrides {
            method: Some(Method::MaskClip),
            csa_projection: Some(CsaProjection::Query),
            ..Overrides::default()
        });
        assert_eq!(error.setting(), Setting::CsaProjection);
        for (logit_scale, expected) in [
            (0.0, SettingsError::NotPositive(Setting::LogitScale)),
            (-40.0, SettingsError::NotPositive(Setting::LogitScale)),
            (f32::INFINITY, SettingsError::NotFinite(Setting::LogitScale)),
        ] {
            let overrides = Overrides {
                logit_scale: Some(logit_scale),
                ..Overrides::default()
            };
            assert_eq!(refused(overrides), expected, "{logit_scale}");
        }
        for prob_thd in [-0.1, 1.5, f32::NAN, f32::INFINITY] {
            let overrides = Overrides {
                prob_thd: Some(prob_thd),
                ..Overrides::default()
            };
            assert_eq!(
                refused(overrides),
                SettingsError::NotAFraction(Setting::ProbThd),
                "{prob_thd}"
            );
        }
        assert_eq!(
            Settings::DEFAULT.validate_for_patch(16),
            Ok(()),
            "224-pixel windows hold 16-pixel patches"
        );
        let small = Settings {
            window: 8,
            stride: 8,
            ..Settings::DEFAULT
        };
        assert_eq!(
            small.validate_for_patch(16).unwrap_err().setting(),
            Setting::Window
        );
        let tiny = Settings {
            short_side: 1,
            ..Settings::DEFAULT
        };
        assert_eq!(
            tiny.validate_for_patch(16).unwrap_err().to_string(),
            "short_side 1 is smaller than the model's 16-pixel patch"
        );
    }
}
