//! Places held per client address (IPv6: per /64), capped: one client cannot take every
//! connection or password check.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use super::address_key;

/// Places (connections, password checks) held per client address (IPv6: per /64), capped:
/// one client cannot take what everyone shares.
#[derive(Clone)]
pub struct PerAddressCap {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    cap: usize,
}

/// One place of a client address; dropping it frees the place.
pub struct AddressPlace {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl PerAddressCap {
    /// At most `cap` places per address.
    pub fn new(cap: usize) -> Self {
        PerAddressCap {
            held: Arc::default(),
            cap,
        }
    }

    /// A place for `address`, unless it holds `cap` already (then how many it holds).
    pub fn take(&self, address: IpAddr) -> Result<AddressPlace, usize> {
        let key = address_key(address);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(key).or_insert(0);
        if *count >= self.cap {
            return Err(*count);
        }
        *count += 1;
        Ok(AddressPlace {
            held: self.held.clone(),
            key,
        })
    }

    /// Addresses holding a place now.
    pub fn addresses(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_cap_and_gets_places_back() {
        let per_address = PerAddressCap::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = per_address.take(a).unwrap();
        let _second = per_address.take(a).unwrap();
        assert!(per_address.take(a).is_err(), "a third connection of a");
        assert!(per_address.take(b).is_ok(), "b has its own places");
        drop(first);
        assert!(
            per_address.take(a).is_ok(),
            "a closed one, so one more fits"
        );
        // One IPv6 /64 counts as one address.
        let per_address = PerAddressCap::new(1);
        let _held = per_address.take("2001:db8::1".parse().unwrap()).unwrap();
        assert!(per_address.take("2001:db8::ffff".parse().unwrap()).is_err());
        assert!(per_address.addresses() == 1);
    }
}
