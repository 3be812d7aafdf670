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
    /// Names the output (`<stem>-<name>.<ext>`): ASCII letters, digits, `-` and `_`,
    /// at most 64 bytes, unique within one call.
    pub name: String,
    /// Box width in pixels, at least 1.
    pub width: u32,
    /// Box height in pixels, at least 1; `None` leaves the height unbounded.
    pub height: Option<u32>,
    /// How the image is fitted to the box.
    pub fit: Fit,
    /// Output encoding.
    pub format: OutputFormat,
    /// Encoder quality, 1 (smallest) to 100 (best); only JPEG uses it.
    pub quality: u8,
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
            quality: 80,
        }
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
        Ok(())
    }
}

/// Checks every preset and that their names, hence their file names, are distinct.
pub(crate) fn validate_presets(presets: &[Preset]) -> Result<(), ImagingError> {
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

fn inside(src_w: u32, src_h: u32, box_w: Option<u32>, box_h: Option<u32>) -> Geometry {
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
            quality: 80,
        }
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
