//! The holders of one lock and the tokens of their grants, kept compact.
//!
//! Almost every lock has exactly one holder, and a million held locks are
//! a million of these: an ordered map would allocate a whole tree node
//! (about 200 bytes) for that one entry. [`HolderTokens`] keeps the pairs
//! sorted by session in a vector that holds one pair inline, so a lock with
//! one holder allocates nothing. It serializes exactly as the ordered map
//! it replaces did, so snapshots keep their layout.

use std::collections::BTreeMap;
use std::ops::Index;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;

use super::command::{FencingToken, SessionId};

/// A lock's holders and their tokens, ordered by session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HolderTokens(SmallVec<[(SessionId, FencingToken); 1]>);

impl HolderTokens {
    /// No holders.
    pub fn new() -> HolderTokens {
        HolderTokens::default()
    }

    /// How many sessions hold the lock.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nobody holds the lock.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, session: &SessionId) -> Result<usize, usize> {
        self.0.binary_search_by_key(session, |(holder, _)| *holder)
    }

    /// The token of `session`'s grant, if it holds the lock.
    pub fn get(&self, session: &SessionId) -> Option<&FencingToken> {
        self.position(session).ok().map(|index| &self.0[index].1)
    }

    /// Whether `session` holds the lock.
    pub fn contains_key(&self, session: &SessionId) -> bool {
        self.position(session).is_ok()
    }

    /// Records `session`'s grant under `token`; returns the token it
    /// replaces, if the session held the lock already.
    pub fn insert(&mut self, session: SessionId, token: FencingToken) -> Option<FencingToken> {
        match self.position(&session) {
            Ok(index) => Some(std::mem::replace(&mut self.0[index].1, token)),
            Err(index) => {
                self.0.insert(index, (session, token));
                None
            }
        }
    }

    /// Forgets `session`'s grant; returns its token, if it held the lock.
    pub fn remove(&mut self, session: &SessionId) -> Option<FencingToken> {
        let index = self.position(session).ok()?;
        let (_, token) = self.0.remove(index);
        if self.0.spilled() && self.0.len() <= 1 {
            // Back to one holder: give the heap allocation back.
            self.0.shrink_to_fit();
        }
        Some(token)
    }

    /// The holders and their tokens, by session.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&SessionId, &FencingToken)> + ExactSizeIterator {
        self.0.iter().map(|(session, token)| (session, token))
    }

    /// The holding sessions, in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &SessionId> + ExactSizeIterator {
        self.0.iter().map(|(session, _)| session)
    }

    /// The tokens, in the order of their sessions.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &FencingToken> + ExactSizeIterator {
        self.0.iter().map(|(_, token)| token)
    }
}

impl Index<&SessionId> for HolderTokens {
    type Output = FencingToken;

    /// The token of `session`'s grant; panics if it does not hold the lock,
    /// as an ordered map's index does.
    fn index(&self, session: &SessionId) -> &FencingToken {
        self.get(session)
            .unwrap_or_else(|| panic!("session {session:?} does not hold this lock"))
    }
}

impl<'a> IntoIterator for &'a HolderTokens {
    type Item = (&'a SessionId, &'a FencingToken);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (SessionId, FencingToken)>,
        fn(&'a (SessionId, FencingToken)) -> (&'a SessionId, &'a FencingToken),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(session, token)| (session, token))
    }
}

impl FromIterator<(SessionId, FencingToken)> for HolderTokens {
    /// Later pairs of the same session replace earlier ones, as in a map.
    fn from_iter<I: IntoIterator<Item = (SessionId, FencingToken)>>(pairs: I) -> HolderTokens {
        let mut holders = HolderTokens::new();
        for (session, token) in pairs {
            holders.insert(session, token);
        }
        holders
    }
}

impl Serialize for HolderTokens {
    /// As a map from session to token, like the `BTreeMap` snapshots held.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for HolderTokens {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<HolderTokens, D::Error> {
        let map = BTreeMap::<SessionId, FencingToken>::deserialize(deserializer)?;
        Ok(map.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(session: u64, token: u64) -> (SessionId, FencingToken) {
        (SessionId::new(session), FencingToken::new(token))
    }

    #[test]
    fn holder_tokens_serialize_to_the_same_bytes_as_the_ordered_map() {
        let pairs = [pair(9, 3), pair(2, 7), pair(5, 1)];
        for count in 0..=pairs.len() {
            let map: BTreeMap<SessionId, FencingToken> = pairs[..count].iter().copied().collect();
            let holders: HolderTokens = pairs[..count].iter().copied().collect();
            let from_map = bincode::serialize(&map).expect("a map serializes");
            assert_eq!(bincode::serialize(&holders).expect("holders serialize"), from_map);
            let back: HolderTokens = bincode::deserialize(&from_map).expect("the map's bytes decode");
            assert_eq!(back, holders);
            assert!(back.keys().zip(map.keys()).all(|(a, b)| a == b));
            assert_eq!(back.len(), map.len());
        }
    }

    #[test]
    fn holder_tokens_behave_as_an_ordered_map_under_inserts_and_removes() {
        let mut holders = HolderTokens::new();
        let mut map = BTreeMap::new();
        // A fixed walk through inserts, replacements and removes.
        for step in 0u64..200 {
            let session = SessionId::new(step * 7 % 11);
            if step % 3 == 0 {
                assert_eq!(holders.remove(&session), map.remove(&session));
            } else {
                let token = FencingToken::new(step);
                assert_eq!(holders.insert(session, token), map.insert(session, token));
            }
            assert!(holders.iter().eq(map.iter()));
            assert_eq!(holders.contains_key(&session), map.contains_key(&session));
            assert_eq!(holders.get(&session), map.get(&session));
        }
    }

    #[test]
    fn one_holder_is_kept_inline() {
        let mut holders = HolderTokens::new();
        holders.insert(SessionId::new(1), FencingToken::new(1));
        assert!(!holders.0.spilled(), "one holder needs no allocation");
        holders.insert(SessionId::new(2), FencingToken::new(2));
        assert!(holders.0.spilled());
        holders.remove(&SessionId::new(2));
        assert!(!holders.0.spilled(), "back to one holder, back inline");
    }
}
