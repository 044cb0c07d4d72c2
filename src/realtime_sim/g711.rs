//! G.711 μ-law / A-law and the audio the fake speaks: the caller side of a
//! phone call is 8 kHz G.711, so the fake must both hear it (its VAD) and
//! answer in it, with a pattern a test can pick out of a byte stream.

/// μ-law silence (the code for linear 0).
pub const ULAW_SILENCE: u8 = 0xFF;

/// The first bytes of every audio response the fake sends in `audio/pcmu`,
/// chosen so that no real μ-law tone or silence starts this way. After the
/// marker comes [`PATTERN_TONE_HZ`] at [`PATTERN_AMPLITUDE`].
pub const PATTERN_MARKER: [u8; 8] = [0x0F, 0x8F, 0x1E, 0x9E, 0x2D, 0xAD, 0x3C, 0xBC];

/// Frequency of the tone after the marker (a whole number of samples per
/// period at both 8 kHz and 24 kHz, so the pattern repeats exactly).
pub const PATTERN_TONE_HZ: u32 = 400;

/// Peak of the pattern's tone, in 16-bit linear units.
pub const PATTERN_AMPLITUDE: f64 = 6000.0;

/// Decodes one μ-law byte (ITU-T G.711) to 16-bit linear.
pub fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let exponent = (u >> 4) & 0x07;
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    // The magnitude never exceeds 32124, so the cast cannot wrap.
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Encodes 16-bit linear to μ-law (ITU-T G.711, with the usual 0x84 bias).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut x = i32::from(sample);
    let sign = if x < 0 {
        x = -x;
        0x80
    } else {
        0
    };
    x = x.min(CLIP) + BIAS;
    let mut exponent = 7u8;
    let mut mask = 0x4000;
    while exponent > 0 && x & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = ((x >> (exponent + 3)) & 0x0F) as u8;
    !(sign | (exponent << 4) | mantissa)
}

/// Decodes one A-law byte (ITU-T G.711) to 16-bit linear.
pub fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let mut t = i32::from(a & 0x0F) << 4;
    let segment = (a & 0x70) >> 4;
    match segment {
        0 => t += 8,
        1 => t += 0x108,
        s => {
            t += 0x108;
            t <<= s - 1;
        }
    }
    if a & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

/// Encodes 16-bit linear to A-law (ITU-T G.711).
pub fn linear_to_alaw(sample: i16) -> u8 {
    const SEGMENT_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
    let mut x = i32::from(sample) >> 3;
    let mask = if x >= 0 {
        0xD5
    } else {
        x = -x - 1;
        0x55
    };
    let Some(segment) = SEGMENT_END.iter().position(|&end| x <= end) else {
        return 0x7F ^ mask;
    };
    let mut a = (segment as u8) << 4;
    a |= if segment < 2 {
        ((x >> 1) & 0x0F) as u8
    } else {
        ((x >> segment) & 0x0F) as u8
    };
    a ^ mask
}

/// Root mean square of 16-bit linear samples (0 for none), the loudness
/// measure of the fake's VAD.
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len() as f64).sqrt()
}

fn sine(i: usize, hz: u32, rate: u32, amplitude: f64) -> i16 {
    let phase = 2.0 * std::f64::consts::PI * f64::from(hz) * i as f64 / f64::from(rate);
    (amplitude * phase.sin()).round() as i16
}

/// A μ-law tone, `ms` long: what a test "says" to the fake to trigger its VAD.
pub fn tone_ulaw(ms: u32, hz: u32, amplitude: f64) -> Vec<u8> {
    (0..ms as usize * 8)
        .map(|i| linear_to_ulaw(sine(i, hz, 8000, amplitude)))
        .collect()
}

/// μ-law silence, `ms` long.
pub fn silence_ulaw(ms: u32) -> Vec<u8> {
    vec![ULAW_SILENCE; ms as usize * 8]
}

/// The first `len` bytes of the fake's answer in `audio/pcmu`:
/// [`PATTERN_MARKER`], then the tone. Every response carries exactly this
/// (cut where the response ends), so a test recognises it by comparing a
/// received stream with `pattern_ulaw(stream.len())`.
pub fn pattern_ulaw(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| match PATTERN_MARKER.get(i) {
            Some(&b) => b,
            None => linear_to_ulaw(sine(i, PATTERN_TONE_HZ, 8000, PATTERN_AMPLITUDE)),
        })
        .collect()
}

/// Whether `bytes` is a non-empty prefix of the pattern (a response, or the
/// part of it sent before it was cut).
pub fn is_pattern_ulaw(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes == pattern_ulaw(bytes.len()).as_slice()
}

/// The same answer in `audio/pcma`: the μ-law pattern sample by sample,
/// re-encoded.
pub fn pattern_alaw(len: usize) -> Vec<u8> {
    pattern_ulaw(len)
        .into_iter()
        .map(|u| linear_to_alaw(ulaw_to_linear(u)))
        .collect()
}

/// The answer in `audio/pcm` (24 kHz, 16-bit little-endian), `len` bytes:
/// the marker's samples decoded from μ-law, then the tone at 24 kHz.
pub fn pattern_pcm16(len: usize) -> Vec<u8> {
    let samples = len.div_ceil(2);
    let mut out = Vec::with_capacity(samples * 2);
    for i in 0..samples {
        let s = match PATTERN_MARKER.get(i) {
            Some(&b) => ulaw_to_linear(b),
            None => sine(i, PATTERN_TONE_HZ, 24000, PATTERN_AMPLITUDE),
        };
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_round_trips_every_code_but_negative_zero() {
        for u in 0..=255u8 {
            if u == 0x7F {
                // 0x7F is μ-law's "negative zero"; it encodes back as 0xFF.
                assert_eq!(linear_to_ulaw(ulaw_to_linear(u)), 0xFF);
                continue;
            }
            assert_eq!(linear_to_ulaw(ulaw_to_linear(u)), u, "code {u:#04x}");
        }
    }

    #[test]
    fn alaw_round_trips_every_code() {
        for a in 0..=255u8 {
            assert_eq!(linear_to_alaw(alaw_to_linear(a)), a, "code {a:#04x}");
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(alaw_to_linear(0xD5), 8);
    }

    #[test]
    fn tone_is_loud_and_silence_is_quiet() {
        let tone: Vec<i16> = tone_ulaw(20, 400, 8000.0)
            .into_iter()
            .map(ulaw_to_linear)
            .collect();
        let quiet: Vec<i16> = silence_ulaw(20).into_iter().map(ulaw_to_linear).collect();
        assert!(rms(&tone) > 5000.0);
        assert_eq!(rms(&quiet), 0.0);
    }

    #[test]
    fn the_pattern_starts_with_its_marker_and_is_recognised() {
        let p = pattern_ulaw(400);
        assert_eq!(&p[..8], &PATTERN_MARKER);
        assert!(is_pattern_ulaw(&p));
        assert!(is_pattern_ulaw(&p[..100]));
        assert!(!is_pattern_ulaw(&tone_ulaw(50, 400, 6000.0)));
        assert!(!is_pattern_ulaw(&[]));
        assert_eq!(pattern_pcm16(7).len(), 7);
        assert_eq!(pattern_alaw(9).len(), 9);
    }
}
