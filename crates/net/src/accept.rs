//! The accept loop of the services a guest reaches over TCP (DNS, the egress proxy): at most
//! `max` connections at once (one past that is closed at once), each handled on a task that
//! ends with the loop, so aborting a service's task ends all its connections too.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::debug;

/// Pause after a failed accept (out of descriptors), so the loop does not spin.
pub(crate) const BACKOFF: Duration = Duration::from_millis(50);

/// Accepts on `listener` for ever, running `handle` on each connection within the bound.
pub(crate) async fn bounded<F, Fut>(listener: TcpListener, max: usize, what: &str, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                        debug!("{what}: {max} connections open, closed one");
                        continue;
                    };
                    let work = handle(stream);
                    tasks.spawn(async move {
                        let _permit = permit;
                        work.await;
                    });
                }
                Err(e) => {
                    debug!("{what}: accept: {e}");
                    tokio::time::sleep(BACKOFF).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}
