//! Which of a preset's formats a `GET /images/<id>/<preset>` gets, as browsers and CDNs
//! expect:
//!
//! - `?format=NAME` forces one (the caller answers 404 when the preset has none);
//! - otherwise a format other than the fallback (the preset's last) is served only when
//!   `Accept` names its media type explicitly (`image/avif`, `image/webp`) with q > 0;
//!   among those named (the fallback too, if named), the highest q wins, ties going to
//!   the preset's order;
//! - `*/*`, `image/*`, `image/jpeg` alone, no header, or nothing acceptable: the
//!   fallback, never a 406.
//!
//! Every answer for a preset with more than one format carries `Vary: Accept`.

use pixpool_imaging::OutputFormat;

/// The format to serve among `formats` (the preset's, in its order of preference, the
/// fallback last; never empty) for an `Accept` header.
pub(crate) fn choose(formats: &[OutputFormat], accept: Option<&str>) -> OutputFormat {
    let Some(&fallback) = formats.last() else {
        return OutputFormat::Jpeg;
    };
    let Some(accept) = accept else {
        return fallback;
    };
    let mut best: Option<(f32, OutputFormat)> = None;
    for &format in formats {
        let Some(q) = explicit_q(accept, format.content_type()) else {
            continue;
        };
        // Strictly greater: a tie keeps the earlier, preferred, format.
        if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, format));
        }
    }
    best.map_or(fallback, |(_, f)| f)
}

/// The q-value `accept` gives `media_type` by name (not through `*/*` or `image/*`),
/// if it names it: its first such entry, q = 1 when unstated. An entry whose q cannot
/// be read is ignored.
fn explicit_q(accept: &str, media_type: &str) -> Option<f32> {
    accept.split(',').find_map(|entry| {
        let mut params = entry.split(';');
        let name = params.next()?.trim();
        if !name.eq_ignore_ascii_case(media_type) {
            return None;
        }
        let mut q = 1.0;
        for param in params {
            let (key, value) = param.split_once('=')?;
            if key.trim().eq_ignore_ascii_case("q") {
                q = value
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|q| (0.0..=1.0).contains(q))?;
            }
        }
        Some(q)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use OutputFormat::{Avif, Jpeg, Png, WebP};

    const ALL: [OutputFormat; 3] = [Avif, WebP, Jpeg];

    #[test]
    fn the_fallback_unless_a_better_format_is_named() {
        for (accept, want) in [
            (None, Jpeg),
            (Some(""), Jpeg),
            (Some("*/*"), Jpeg),
            (Some("image/*"), Jpeg),
            (Some("image/jpeg"), Jpeg),
            (Some("image/*,*/*;q=0.8"), Jpeg),
            (Some("text/html"), Jpeg),
            // Chrome's and Firefox's image Accept headers.
            (
                Some("image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"),
                Avif,
            ),
            (Some("image/avif,image/webp,*/*"), Avif),
            // Safari 14: WebP, no AVIF.
            (
                Some("image/webp,image/png,image/svg+xml,image/*;q=0.8"),
                WebP,
            ),
            (Some("image/webp;q=0.9, image/avif;q=0.5"), WebP),
            (Some("image/avif;q=0.5, image/webp;q=0.5"), Avif),
            (Some("image/webp;q=0.5, image/avif;q=0.5"), Avif),
            (Some("image/avif;q=0, image/webp;q=0.1"), WebP),
            (Some("image/avif;q=0, image/webp;q=0"), Jpeg),
            (Some("IMAGE/AVIF"), Avif),
            (Some("image/avif;q=bogus, image/webp"), WebP),
            (Some("image/avif;q=2"), Jpeg),
            (Some("image/avif ; q=0.7 , image/webp;q=0.6"), Avif),
        ] {
            assert_eq!(choose(&ALL, accept), want, "{accept:?}");
        }
    }

    #[test]
    fn only_the_presets_formats_are_candidates() {
        assert_eq!(choose(&[Png], Some("image/avif,image/webp")), Png);
        assert_eq!(choose(&[WebP, Png], Some("image/avif")), Png);
        assert_eq!(choose(&[WebP, Png], Some("image/avif,image/webp")), WebP);
        // The fallback named with a higher q than the others wins over them.
        assert_eq!(
            choose(&[Avif, Jpeg], Some("image/jpeg;q=1, image/avif;q=0.1")),
            Jpeg
        );
        assert_eq!(choose(&[Avif, Jpeg], Some("image/jpeg, image/avif")), Avif);
    }
}
