//! Service selection: smooth weighted round-robin, the way nginx spreads requests over
//! weighted servers. Pure: the caller keeps the per-candidate counters and says which
//! candidates can take a request.

/// Smooth weighted round-robin (as nginx does): deterministic, and spreads picks evenly.
/// `weights` yields (index, weight) for the candidates that can take a request; one pass,
/// nothing allocated.
pub fn smooth_wrr(current: &mut [i64], weights: impl Iterator<Item = (usize, i64)>) -> Option<usize> {
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for (i, w) in weights {
        total += w;
        current[i] += w;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let b = best?;
    current[b] -= total;
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::smooth_wrr;

    #[test]
    fn picks_follow_the_weights_and_interleave() {
        let mut cur = vec![0; 3];
        let weights = [5i64, 1, 1];
        let picks: Vec<usize> =
            (0..7).map(|_| smooth_wrr(&mut cur, weights.iter().enumerate().map(|(i, w)| (i, *w))).unwrap()).collect();
        // nginx's example: a a b a c a a for weights 5, 1, 1.
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(cur, vec![0, 0, 0], "a full cycle returns to the start");
    }

    #[test]
    fn no_candidate_means_no_pick() {
        let mut cur = vec![0; 2];
        assert_eq!(smooth_wrr(&mut cur, std::iter::empty()), None);
        assert_eq!(smooth_wrr(&mut cur, [(1usize, 3i64)].into_iter()), Some(1));
    }
}
