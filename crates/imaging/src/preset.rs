//! [`Preset`]s (what outputs to make) and the geometry that sizes them.
//!
//! Geometry never upscales: an output is at most as detailed as the source. Sizes are
//! computed in the *stored* orientation of the source, with the preset's box transposed
//! when the EXIF orientation swaps the axes, so that the (large) source never has to be
//! rotated; only the (small) outputs are.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::ImagingError;
use crate::format::OutputFormat;

/// How an image is fitted to a preset's box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Scale to fit within width × height (no height: width only), keeping the aspect
    /// ratio; never upscale, so a smaller image keeps its size.
    Inside,
    /// Scale to fill width × height exactly and crop the overflow around the centre. Never
    /// upscale: when the source is smaller than the box, the box shrinks (keeping its
    /// aspect ratio) until it fits the source. Without a height there is nothing to crop,
    /// and `Cover` behaves as `Inside`.
    Cover,
}

/// One output to produce from every input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preset {
    /// Names the output: ASCII letters, digits, `-` and `_`, at most 64 bytes, unique
    /// within one call, since the server puts it in file names and URLs as it is.
    pub name: String,
    /// Box width in pixels, at least 1.
    pub width: u32,
    /// Box height in pixels, at least 1; `None` leaves the height unbounded.
    pub height: Option<u32>,
    /// How the image is fitted to the box.
    pub fit: Fit,
    /// Output encoding: the one every client gets (the fallback, the last of a
    /// `a+b+c` list).
    pub format: OutputFormat,
    /// Formats also written, served instead of `format` to a client whose `Accept`
    /// names them (`avif+webp+jpeg`: AVIF and WebP, in that order of preference).
    #[serde(default)]
    pub alternatives: Vec<OutputFormat>,
    /// Encoder quality, 1 (smallest) to 100 (best); only JPEG uses it.
    pub quality: u8,
    /// When the source has real transparency, encode in this format instead of
    /// `format` (e.g. PNG, to keep the alpha channel a JPEG would flatten onto
    /// white). `None`: always `format`.
    #[serde(default)]
    pub alpha_format: Option<OutputFormat>,
}

impl Preset {
    /// The default preset: 800 pixels wide, any height, JPEG quality 80.
    pub fn medium() -> Preset {
        Preset {
            name: "medium".to_owned(),
            width: 800,
            height: None,
            fit: Fit::Inside,
            format: OutputFormat::Jpeg,
            alternatives: Vec::new(),
            quality: 80,
            alpha_format: None,
        }
    }

    /// The built-in set: `thumb` 200×200 cover-crop, `small` 480 wide, `medium` 800
    /// wide, `large` 1600 wide (fit, never upscaled); JPEG (quality 80, thumbnails 85).
    pub fn builtin() -> Vec<Preset> {
        let wide = |name: &str, width| Preset {
            name: name.to_owned(),
            width,
            ..Preset::medium()
        };
        vec![
            Preset {
                name: "thumb".to_owned(),
                width: 200,
                height: Some(200),
                fit: Fit::Cover,
                quality: 85,
                ..Preset::medium()
            },
            wide("small", 480),
            Preset::medium(),
            wide("large", 1600),
        ]
    }

    /// The fallback format for a source with (`true`) or without alpha.
    pub fn format_for(&self, source_has_alpha: bool) -> OutputFormat {
        match self.alpha_format {
            Some(f) if source_has_alpha => f,
            _ => self.format,
        }
    }

    /// Every format written for a source with or without alpha, in order of
    /// preference: the alternatives, then the fallback (last).
    pub fn formats_for(&self, source_has_alpha: bool) -> Vec<OutputFormat> {
        let fallback = self.format_for(source_has_alpha);
        let mut formats: Vec<OutputFormat> = self
            .alternatives
            .iter()
            .copied()
            .filter(|f| *f != fallback)
            .collect();
        formats.push(fallback);
        formats
    }

    /// Whether any format it may write keeps alpha.
    pub fn may_keep_alpha(&self) -> bool {
        self.format.keeps_alpha()
            || self.alpha_format.is_some_and(OutputFormat::keeps_alpha)
            || self.alternatives.iter().any(|f| f.keeps_alpha())
    }

    fn validate(&self) -> Result<(), ImagingError> {
        let invalid = |reason| ImagingError::ValidatePreset {
            name: self.name.clone(),
            reason,
        };
        check_file_name_part(&self.name, 64).map_err(invalid)?;
        if self.width == 0 || self.height == Some(0) {
            return Err(invalid("width and height must be at least 1"));
        }
        if !(1..=100).contains(&self.quality) {
            return Err(invalid("quality must be between 1 and 100"));
        }
        let mut seen = vec![self.format];
        for f in &self.alternatives {
            if seen.contains(f) {
                return Err(invalid("a format is listed twice"));
            }
            seen.push(*f);
        }
        Ok(())
    }
}

/// Why a preset specification could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid preset {spec:?}: {reason} (expected NAME:WIDTH[xHEIGHT][:inside|cover][:FORMAT[+FORMAT…]][:qQUALITY][:alpha=png|webp|avif], FORMAT: jpeg, png, webp or avif)")]
pub struct PresetParseError {
    /// The specification as given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::str::FromStr for Preset {
    type Err = PresetParseError;

    /// Parses `NAME:WIDTH[xHEIGHT][:inside|cover][:FORMAT[+FORMAT…]][:qQUALITY][:alpha=FORMAT]`,
    /// e.g. `thumb:200x200:cover:q85`, `large:1600:webp`, `hero:1200:alpha=png`,
    /// `medium:800:avif+webp+jpeg` (the last listed is the fallback).
    fn from_str(spec: &str) -> Result<Preset, PresetParseError> {
        let fail = |reason: &str| PresetParseError {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts = spec.trim().split(':');
        let name = parts.next().unwrap_or("").trim();
        let size = parts.next().ok_or_else(|| fail("missing WIDTH"))?;
        let (w, h) = match size.split_once('x') {
            Some((w, h)) => (w, Some(h)),
            None => (size, None),
        };
        let width = w
            .parse::<u32>()
            .map_err(|_| fail("WIDTH is not a number"))?;
        let height = h
            .map(|h| h.parse::<u32>().map_err(|_| fail("HEIGHT is not a number")))
            .transpose()?;
        let mut preset = Preset {
            name: name.to_owned(),
            width,
            height,
            ..Preset::medium()
        };
        let format = OutputFormat::from_name;
        for opt in parts.map(str::trim) {
            if let Some(f) = format(opt) {
                preset.format = f;
                preset.alternatives.clear();
            } else if opt.contains('+') {
                let mut listed = opt
                    .split('+')
                    .map(|f| format(f.trim()).ok_or_else(|| fail(&format!("unknown format {f:?}"))))
                    .collect::<Result<Vec<_>, _>>()?;
                preset.format = listed.pop().expect("a split yields at least one part");
                preset.alternatives = listed;
            } else if opt == "inside" {
                preset.fit = Fit::Inside;
            } else if opt == "cover" {
                preset.fit = Fit::Cover;
            } else if let Some(q) = opt.strip_prefix('q') {
                preset.quality = q.parse().map_err(|_| fail("QUALITY is not a number"))?;
            } else if let Some(f) = opt.strip_prefix("alpha=") {
                preset.alpha_format = Some(format(f).ok_or_else(|| fail("unknown alpha format"))?);
            } else {
                return Err(fail(&format!("unknown option {opt:?}")));
            }
        }
        preset.validate().map_err(|e| fail(&e.to_string()))?;
        Ok(preset)
    }
}

impl std::fmt::Display for Preset {
    /// The specification [`FromStr`](std::str::FromStr) reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = OutputFormat::name;
        write!(f, "{}:{}", self.name, self.width)?;
        if let Some(h) = self.height {
            write!(f, "x{h}")?;
        }
        let fit = match self.fit {
            Fit::Inside => "inside",
            Fit::Cover => "cover",
        };
        write!(f, ":{fit}:")?;
        for alternative in &self.alternatives {
            write!(f, "{}+", name(*alternative))?;
        }
        write!(f, "{}:q{}", name(self.format), self.quality)?;
        if let Some(a) = self.alpha_format {
            write!(f, ":alpha={}", name(a))?;
        }
        Ok(())
    }
}

/// Checks every preset and that their names, hence their file names, are distinct.
pub fn validate_presets(presets: &[Preset]) -> Result<(), ImagingError> {
    let mut names = HashSet::with_capacity(presets.len());
    for preset in presets {
        preset.validate()?;
        if !names.insert(preset.name.as_str()) {
            return Err(ImagingError::ValidatePreset {
                name: preset.name.clone(),
                reason: "two presets share this name",
            });
        }
    }
    Ok(())
}

/// Accepts names safe to put in a file name as they are: no separators, no dot files,
/// nothing a shell or a URL would need to escape.
pub(crate) fn check_file_name_part(part: &str, max_len: usize) -> Result<(), &'static str> {
    if part.is_empty() {
        return Err("must not be empty");
    }
    if part.len() > max_len {
        return Err("too long");
    }
    if !part
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("only ASCII letters, digits, '-' and '_' are allowed");
    }
    Ok(())
}

/// A region of the source, in source pixels (fractional: resampling handles sub-pixels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Region {
    pub(crate) left: f64,
    pub(crate) top: f64,
    pub(crate) width: f64,
    pub(crate) height: f64,
}

impl Region {
    pub(crate) fn whole(width: u32, height: u32) -> Region {
        Region {
            left: 0.0,
            top: 0.0,
            width: f64::from(width),
            height: f64::from(height),
        }
    }
}

/// Where an output comes from and how large it is, in stored orientation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Geometry {
    /// The part of the source the output shows.
    pub(crate) region: Region,
    /// Output width before orientation.
    pub(crate) width: u32,
    /// Output height before orientation.
    pub(crate) height: u32,
}

/// Sizes the output of `preset` for a source stored as `src_w` × `src_h`.
///
/// `transposed` says that the EXIF orientation swaps the axes: the preset's box, which is
/// meant for the image as displayed, is then applied with width and height exchanged.
pub(crate) fn geometry(preset: &Preset, src_w: u32, src_h: u32, transposed: bool) -> Geometry {
    let (box_w, box_h) = if transposed {
        (preset.height, Some(preset.width))
    } else {
        (Some(preset.width), preset.height)
    };
    match (preset.fit, box_w, box_h) {
        (Fit::Cover, Some(w), Some(h)) => cover(src_w, src_h, w, h),
        _ => inside(src_w, src_h, box_w, box_h),
    }
}

pub(crate) fn inside(src_w: u32, src_h: u32, box_w: Option<u32>, box_h: Option<u32>) -> Geometry {
    let (sw, sh) = (f64::from(src_w), f64::from(src_h));
    let scale_w = box_w.map_or(f64::INFINITY, |w| f64::from(w) / sw);
    let scale_h = box_h.map_or(f64::INFINITY, |h| f64::from(h) / sh);
    let (width, height) = if scale_w >= 1.0 && scale_h >= 1.0 {
        (src_w, src_h)
    } else if scale_w <= scale_h {
        // Width-bound: the box width is exact, the height follows the aspect ratio.
        let w = box_w.expect("a finite scale comes from a bound");
        (w, scaled(src_h, scale_w))
    } else {
        let h = box_h.expect("a finite scale comes from a bound");
        (scaled(src_w, scale_h), h)
    };
    Geometry {
        region: Region::whole(src_w, src_h),
        width,
        height,
    }
}

fn cover(src_w: u32, src_h: u32, box_w: u32, box_h: u32) -> Geometry {
    let (sw, sh) = (f64::from(src_w), f64::from(src_h));
    let (bw, bh) = (f64::from(box_w), f64::from(box_h));
    let scale = (bw / sw).max(bh / sh);
    let (width, height) = if scale <= 1.0 {
        (box_w, box_h)
    } else {
        // Shrink the box by the factor we refuse to upscale by; the result fits the source
        // in one dimension exactly and in the other after cropping.
        (
            scaled(box_w, 1.0 / scale).min(src_w),
            scaled(box_h, 1.0 / scale).min(src_h),
        )
    };
    // The largest centred region of the output's aspect ratio.
    let aspect = f64::from(width) / f64::from(height);
    let (region_w, region_h) = if sw / sh > aspect {
        (sh * aspect, sh)
    } else {
        (sw, sw / aspect)
    };
    let region = if scale > 1.0 {
        // 1:1 copy: keep whole-pixel offsets so that no resampling blurs it.
        Region {
            left: ((sw - f64::from(width)) / 2.0).floor(),
            top: ((sh - f64::from(height)) / 2.0).floor(),
            width: f64::from(width),
            height: f64::from(height),
        }
    } else {
        Region {
            left: (sw - region_w) / 2.0,
            top: (sh - region_h) / 2.0,
            width: region_w,
            height: region_h,
        }
    };
    Geometry {
        region,
        width,
        height,
    }
}

/// `len × scale` rounded, at least one pixel.
fn scaled(len: u32, scale: f64) -> u32 {
    let value = (f64::from(len) * scale).round();
    // Never above `len` (scale ≤ 1 here) and at least 1, so the cast cannot truncate.
    (value.max(1.0) as u32).min(len.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(width: u32, height: Option<u32>, fit: Fit) -> Preset {
        Preset {
            name: "t".to_owned(),
            width,
            height,
            fit,
            format: OutputFormat::Jpeg,
            alternatives: Vec::new(),
            quality: 80,
            alpha_format: None,
        }
    }

    #[test]
    fn several_formats_are_listed_with_the_fallback_last() {
        let p: Preset = "medium:800:avif+webp+jpeg:q70".parse().expect("listed");
        assert_eq!(p.format, OutputFormat::Jpeg);
        assert_eq!(p.alternatives, [OutputFormat::Avif, OutputFormat::WebP]);
        assert_eq!(p.to_string(), "medium:800:inside:avif+webp+jpeg:q70");
        assert_eq!(p.to_string().parse::<Preset>().expect("round trip"), p);
        assert_eq!(
            p.formats_for(false),
            [OutputFormat::Avif, OutputFormat::WebP, OutputFormat::Jpeg]
        );
        // A source with alpha: the alpha format is the fallback, listed once.
        let p: Preset = "hero:1200:webp+jpeg:alpha=webp".parse().expect("alpha");
        assert_eq!(p.formats_for(true), [OutputFormat::WebP]);
        assert_eq!(
            p.formats_for(false),
            [OutputFormat::WebP, OutputFormat::Jpeg]
        );
        assert!(p.may_keep_alpha());
        for bad in [
            "a:10:jpeg+jpeg",
            "a:10:avif+gif",
            "a:10:+jpeg",
            "a:10:webp+",
        ] {
            assert!(bad.parse::<Preset>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn specifications_parse_and_bad_ones_say_why() {
        let p: Preset = "thumb:200x200:cover:q85".parse().expect("thumb");
        assert_eq!(
            (p.width, p.height, p.fit, p.quality),
            (200, Some(200), Fit::Cover, 85)
        );
        let p: Preset = "hero:1200:webp:alpha=png".parse().expect("hero");
        assert_eq!(
            (p.format, p.alpha_format),
            (OutputFormat::WebP, Some(OutputFormat::Png))
        );
        assert_eq!(p.format_for(true), OutputFormat::Png);
        assert_eq!(p.format_for(false), OutputFormat::WebP);
        for bad in [
            "",
            "x",
            "a:b",
            "a:0",
            "a:10:q0",
            "a:10:bogus",
            "../x:10",
            "a:10:alpha=gif",
        ] {
            assert!(bad.parse::<Preset>().is_err(), "{bad:?} parsed");
        }
        for p in Preset::builtin().into_iter().chain(
            ["hero:1200:webp:alpha=png".parse().ok()]
                .into_iter()
                .flatten(),
        ) {
            assert_eq!(p.to_string().parse::<Preset>().expect("round trip"), p);
        }
        let names: Vec<_> = Preset::builtin().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["thumb", "small", "medium", "large"]);
        validate_presets(&Preset::builtin()).expect("built-ins are valid");
    }

    fn size(g: Geometry) -> (u32, u32) {
        (g.width, g.height)
    }

    #[test]
    fn inside_width_only() {
        let p = Preset::medium();
        assert_eq!(size(geometry(&p, 1920, 1200, false)), (800, 500));
        assert_eq!(
            size(geometry(&p, 640, 480, false)),
            (640, 480),
            "never upscale"
        );
        // Orientation 6 on 1920×1280 stored: displayed 1280×1920, 800 wide → 800×1200,
        // stored as 1200×800.
        assert_eq!(size(geometry(&p, 1920, 1280, true)), (1200, 800));
    }

    #[test]
    fn inside_box() {
        let p = preset(800, Some(600), Fit::Inside);
        assert_eq!(size(geometry(&p, 2560, 3837, false)), (400, 600));
        assert_eq!(size(geometry(&p, 4000, 1000, false)), (800, 200));
    }

    #[test]
    fn cover_crops_centre() {
        let p = preset(200, Some(200), Fit::Cover);
        let g = geometry(&p, 1920, 1200, false);
        assert_eq!(size(g), (200, 200));
        assert_eq!(g.region.width, 1200.0);
        assert_eq!(g.region.left, 360.0);
    }

    #[test]
    fn cover_never_upscales() {
        let p = preset(400, Some(200), Fit::Cover);
        // Source 300×300: the 2:1 box shrinks to 300×150, a 1:1 centre strip.
        let g = geometry(&p, 300, 300, false);
        assert_eq!(size(g), (300, 150));
        assert_eq!(
            (g.region.left, g.region.top, g.region.width),
            (0.0, 75.0, 300.0)
        );
    }

    #[test]
    fn validation() {
        assert!(validate_presets(&[Preset::medium()]).is_ok());
        let dup = validate_presets(&[Preset::medium(), Preset::medium()]);
        assert!(matches!(dup, Err(ImagingError::ValidatePreset { .. })));
        for bad in ["", "../x", "a b", "a.b"] {
            let mut p = Preset::medium();
            p.name = bad.to_owned();
            let err = validate_presets(&[p]).expect_err(bad);
            assert!(!err.is_input_error(), "presets are the server's");
        }
        let mut p = Preset::medium();
        p.quality = 0;
        assert!(validate_presets(&[p]).is_err());
    }
}
