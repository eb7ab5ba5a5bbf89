//! Resource quantities (`500m`, `1.5`, `64Mi`, `1G`, `2e3`) as millicores and bytes.

/// CPU in millicores (`250m` → 250, `1.5` → 1500), rounded up like Kubernetes.
pub fn millis(q: &str) -> Option<i64> {
    scaled(q, 1000)
}

/// Bytes (`64Mi` → 67108864, `1G` → 10^9, `500m` → 1, rounded up).
pub fn bytes(q: &str) -> Option<i64> {
    scaled(q, 1)
}

/// The quantity times `unit`, rounded up to an integer.
fn scaled(q: &str, unit: i64) -> Option<i64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    let v = value * factor * unit as f64;
    if !v.is_finite() || v < 0.0 || v > i64::MAX as f64 {
        return None;
    }
    // Round up, but not over float noise (0.1 * 1000 = 100.00000000000001).
    let rounded = (v - 1e-9).ceil();
    Some(rounded.max(0.0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(millis("250m"), Some(250));
        assert_eq!(millis("1.5"), Some(1500));
        assert_eq!(millis("0.1"), Some(100));
        assert_eq!(millis("2"), Some(2000));
        assert_eq!(bytes("64Mi"), Some(64 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("2e3"), Some(2000));
        assert_eq!(bytes("500m"), Some(1));
        assert_eq!(bytes("12"), Some(12));
        assert_eq!(bytes("x"), None);
        assert_eq!(bytes("1Zi"), None);
        assert_eq!(bytes("-1"), None);
    }
}
