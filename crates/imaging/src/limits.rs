//! [`Limits`]: how large an image we agree to decode.
//!
//! A small file can declare an enormous image (a PNG of 50000×50000 in 855 bytes, a JPEG of
//! 65500×65500 in 159). The limits are checked on the dimensions in the header, before any
//! pixel buffer exists, and are also handed to the `image` crate's readers so that a decoder
//! allocating on its own (PNG, GIF frames) stops at the same bound.

use serde::{Deserialize, Serialize};

use crate::error::ImagingError;

/// The largest embedded ICC profile accepted, in bytes (inflated, for PNG). Real profiles
/// are a few kilobytes (matrix/shaper RGB) to a couple of megabytes (CMYK lookup tables);
/// a PNG's compressed `iCCP` chunk can otherwise inflate to the whole allocation budget.
pub const MAX_ICC_PROFILE_BYTES: usize = 4 << 20;

/// The most bytes of metadata chunks (PNG text and `eXIf`, WebP `EXIF` and `XMP `) accepted
/// in one file. The decoders keep them in memory beside the pixels; a camera's EXIF is
/// tens of kilobytes, an editor's XMP history rarely a megabyte.
pub const MAX_METADATA_BYTES: usize = 16 << 20;

/// Upper bounds on an input image, all checked before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Widest stored width accepted, in pixels.
    pub max_width: u32,
    /// Tallest stored height accepted, in pixels.
    pub max_height: u32,
    /// Most pixels (width × height) accepted: bounds decode time as well as memory.
    pub max_pixels: u64,
    /// Largest decoded buffer accepted, in bytes (pixels × bytes per pixel of the decoded
    /// colour type), and the allocation budget given to the decoders.
    pub max_alloc_bytes: u64,
    /// Most frames an animation may have.
    #[serde(default = "default_max_frames")]
    pub max_frames: u32,
    /// Most pixels over all frames of an animation (frames × width × height).
    #[serde(default = "default_max_animation_pixels")]
    pub max_animation_pixels: u64,
}

fn default_max_frames() -> u32 {
    Limits::default().max_frames
}

fn default_max_animation_pixels() -> u64 {
    Limits::default().max_animation_pixels
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_width: 16_384,
            max_height: 16_384,
            // 50 MP: above any camera in common use, below a 200 MB RGBA buffer.
            max_pixels: 50_000_000,
            max_alloc_bytes: 1 << 30,
            max_frames: 1000,
            // 100 frames of 10 MP, or 1000 frames of 1 MP.
            max_animation_pixels: 1_000_000_000,
        }
    }
}

impl Limits {
    /// Checks stored dimensions (from a header or a [`Probe`](crate::Probe)) against the
    /// width, height and pixel limits.
    pub fn check_dimensions(&self, width: u32, height: u32) -> Result<(), ImagingError> {
        let exceeded = |limit| ImagingError::CheckLimits {
            width,
            height,
            limit,
        };
        if width > self.max_width {
            return Err(exceeded("width"));
        }
        if height > self.max_height {
            return Err(exceeded("height"));
        }
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(exceeded("pixel count"));
        }
        Ok(())
    }

    /// Checks an animation's frame count, and frames × area.
    pub fn check_frames(&self, frames: u32, width: u32, height: u32) -> Result<(), ImagingError> {
        let exceeded = |limit| ImagingError::CheckFrames {
            frames,
            width,
            height,
            limit,
        };
        if frames > self.max_frames {
            return Err(exceeded("frame count"));
        }
        let total = u64::from(frames) * u64::from(width) * u64::from(height);
        if total > self.max_animation_pixels {
            return Err(exceeded("animation pixels (frames × area)"));
        }
        Ok(())
    }

    /// Checks one frame of an animation (1-based `frame`) on its own size: a frame may be
    /// larger than the logical screen, and a decoder allocates the frame, not the screen.
    pub fn check_frame(&self, frame: u32, width: u32, height: u32) -> Result<(), ImagingError> {
        self.check_dimensions(width, height)
            .map_err(|err| match err {
                ImagingError::CheckLimits { limit, .. } => ImagingError::CheckFrameSize {
                    frame,
                    width,
                    height,
                    limit,
                },
                other => other,
            })
    }

    /// Checks the size of the buffer a decoder is about to allocate.
    pub(crate) fn check_alloc(
        &self,
        width: u32,
        height: u32,
        bytes: u64,
    ) -> Result<(), ImagingError> {
        if bytes > self.max_alloc_bytes {
            return Err(ImagingError::CheckLimits {
                width,
                height,
                limit: "decoded size",
            });
        }
        Ok(())
    }

    /// The same bounds in the `image` crate's terms, for its readers.
    pub(crate) fn to_image_limits(self) -> image::Limits {
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(self.max_width);
        limits.max_image_height = Some(self.max_height);
        limits.max_alloc = Some(self.max_alloc_bytes);
        limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_accepts_20_megapixels_and_refuses_bombs() {
        let limits = Limits::default();
        assert!(limits.check_dimensions(6028, 3391).is_ok());
        assert!(limits.check_dimensions(16_384, 1).is_ok());
        for (w, h) in [(16_385, 1), (1, 16_385), (50_000, 50_000), (8000, 8000)] {
            let err = limits
                .check_dimensions(w, h)
                .expect_err("over the limit must be refused");
            assert!(err.is_input_error());
            assert!(err.is_limit_exceeded());
        }
    }
}
