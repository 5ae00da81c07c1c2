//! The backbone's loop on one broker: hear the others' announces, bring
//! this broker in line with them, and announce what it offers and wants.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use busline_core::{Error, Result};
use futures::{stream::BoxStream, FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{
    announce::{self, Announce, Peers},
    calls::calls_out,
    node::Node,
    publish::{self, Receivers},
    serve, wire,
};
use crate::{
    bridge::{
        changes,
        mirror::{offer, subscribe, Side},
        relay::forwarder_to,
        routes,
    },
    broker::ChannelKeys,
};

/// How long events may gather before the loop acts on them.
const SETTLE: Duration = Duration::from_millis(10);

/// Announces missed before a broker is withdrawn.
const MISSED: u32 = 3;

/// What a broker's side of the backbone was told to do.
pub(super) struct Config {
    pub(super) allow: Option<BTreeSet<String>>,
    pub(super) keys: HashMap<String, ChannelKeys>,
    pub(super) announce: Duration,
}

/// The loop's state.
pub(super) struct Run {
    node: Arc<Node>,
    config: Config,
    side: Side,
    peers: Peers,
    instance: u64,
    receivers: Receivers,
    /// The announce last sent.
    announced: Option<Announce>,
    /// Protected channels not carried (told once).
    refused: BTreeSet<String>,
    /// The other brokers, for [`super::BackboneHandle::brokers`].
    brokers: Arc<Mutex<Vec<String>>>,
    announces: async_nats::Subscriber,
    syncs: async_nats::Subscriber,
    feed: BoxStream<'static, ()>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Run {
    /// Listen on NATS, serve calls and pass publications, announce; the
    /// loop is what [`Run::run`] returns.
    pub(super) async fn start(
        node: Arc<Node>,
        config: Config,
        brokers: Arc<Mutex<Vec<String>>>,
        stop: CancellationToken,
    ) -> Result<impl std::future::Future<Output = ()>> {
        let nats = &node.nats;
        let subjects = &node.subjects;
        let subscribe = |subject: String| async move {
            nats.subscribe(subject).await.map_err(wire::nats_error)
        };
        let announces = subscribe(subjects.announce()).await?;
        let syncs = subscribe(subjects.sync()).await?;
        let calls = subscribe(subjects.calls_for(&node.id)).await?;
        let answers = subscribe(subjects.replies_for(&node.id)).await?;
        let controls = subscribe(subjects.controls_for(&node.id)).await?;
        let tasks = vec![
            tokio::spawn(serve::calls(node.clone(), calls)),
            tokio::spawn(serve::answers(node.clone(), answers)),
            tokio::spawn(serve::controls(node.clone(), controls)),
        ];
        node.local.on_relayed(forwarder_to(
            &node.id,
            publish::deliver(node.clone()),
            node.local.client().encoding(),
            stop.clone(),
        ));
        let feed = changes(&[&node.local]).await;
        let mut instance = [0u8; 8];
        getrandom::fill(&mut instance)
            .map_err(|e| Error::Protocol(format!("no randomness for the backbone: {e}")))?;
        let instance = u64::from_le_bytes(instance);
        let mut run = Run {
            side: Side::new(node.local.clone()),
            peers: Peers::new(&node.id, instance),
            instance,
            receivers: Receivers::default(),
            announced: None,
            refused: BTreeSet::new(),
            brokers,
            announces,
            syncs,
            feed,
            stop,
            tasks,
            config,
            node,
        };
        if let Err(err) = run.step().await {
            run.leave().await;
            return Err(err);
        }
        // Ask the others to announce now rather than at their next turn.
        let asked = run
            .node
            .nats
            .publish(run.node.subjects.sync(), Default::default())
            .await;
        if let Err(err) = asked {
            run.leave().await;
            return Err(wire::nats_error(err));
        }
        Ok(run.run())
    }

    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.config.announce);
        // A slow look at the broker must not make a burst of them after.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            // Announce again (what was last made of the broker: a look
            // that fails or takes long must not silence it), and look.
            let (mut announce, mut changed) = (false, false);
            tokio::select! {
                () = self.stop.cancelled() => break,
                _ = tick.tick() => (announce, changed) = (true, true),
                Some(msg) = self.announces.next() => changed = self.hear(msg),
                Some(_) = self.syncs.next() => announce = true,
                Some(()) = self.feed.next() => changed = true,
            }
            tokio::time::sleep(SETTLE).await;
            while let Some(Some(msg)) = self.announces.next().now_or_never() {
                changed |= self.hear(msg);
            }
            while let Some(Some(_)) = self.syncs.next().now_or_never() {
                announce = true;
            }
            while let Some(Some(())) = self.feed.next().now_or_never() {
                changed = true;
            }
            if self.peers.yields(self.config.announce * MISSED) {
                tracing::error!(
                    broker = %self.node.id,
                    "backbone: another broker keeps announcing this broker's id; this one \
                     leaves the backbone (give each broker its own id: BrokerBuilder::id, \
                     busline broker --id)"
                );
                // Without a word: the others know the id by the twin.
                self.announced = None;
                break;
            }
            if let (true, Some(last)) = (announce, &self.announced) {
                if let Err(err) = publish(&self.node, last).await {
                    tracing::warn!(error = %err, "backbone: could not announce");
                }
            }
            if !changed {
                continue;
            }
            let limit = self.config.announce.max(Duration::from_secs(1));
            let stop = self.stop.clone();
            let stepped = tokio::select! {
                () = stop.cancelled() => break,
                stepped = tokio::time::timeout(limit, self.step()) => stepped,
            };
            match stepped {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "backbone: could not bring the broker in line; trying again")
                }
                Err(_) => {
                    tracing::warn!("backbone: the broker did not answer in time; trying again")
                }
            }
        }
        self.leave().await;
    }

    /// Take in an announce; whether it changes anything.
    fn hear(&mut self, msg: async_nats::Message) -> bool {
        let announce = serde_json::from_slice::<Announce>(&msg.payload)
            .map_err(|e| Error::Serialization(format!("an announce: {e}")))
            .and_then(|a| a.check().map(|()| a));
        match announce {
            Ok(announce) => {
                let broker = announce.broker.clone();
                let changed = self.peers.heard(announce, Instant::now());
                if self.peers.ids().any(|b| *b == broker) {
                    self.node.note_known(&broker);
                }
                changed
            }
            Err(err) => {
                tracing::warn!(error = %err, "backbone: an announce refused");
                false
            }
        }
    }

    /// Look at the broker and the others' announces, make the broker offer
    /// and subscribe to what they do, and announce what it offers and
    /// wants if that changed.
    async fn step(&mut self) -> Result<()> {
        let expiry = self.config.announce * MISSED;
        self.peers.expire(Instant::now(), expiry);
        // Calls in flight to brokers gone fail now, whatever the broker
        // here makes of it.
        let mut brokers: Vec<String> = self.peers.ids().cloned().collect();
        brokers.sort();
        let before = std::mem::replace(
            &mut *self.brokers.lock().unwrap_or_else(|p| p.into_inner()),
            brokers.clone(),
        );
        for gone in before.iter().filter(|b| !brokers.contains(b)) {
            self.node.left(gone);
        }
        let mut status = self.side.bus.status().await?;
        let mut protected = Vec::new();
        let keys = &self.config.keys;
        // Brokers keep protected channels out of their status: describe
        // those carried, where they are protected.
        for channel in keys.keys() {
            let described = async { self.side.join(channel, keys).await?.describe().await };
            match described.await {
                Ok(info) => {
                    status.channels.push(info);
                    protected.push(channel.clone());
                    self.refused.remove(channel);
                }
                Err(err) => {
                    if self.refused.insert(channel.clone()) {
                        tracing::warn!(%channel, error = %err, "backbone: not carried");
                    }
                }
            }
        }
        let present = status.channels.iter().map(|c| c.name.as_str()).collect();
        self.side.forget_all_but(&present);
        // What came to this broker through the backbone does not go back
        // onto it: neither from a broker there now, nor from one it still
        // offers or subscribes for.
        let mut known: HashSet<String> = self.peers.ids().cloned().collect();
        let registered = self
            .side
            .offered
            .values()
            .chain(self.side.subscribed.values());
        known.extend(registered.filter_map(|path| path.last().cloned()));
        let avoid = |broker: &str| known.contains(broker);
        let allow = self.config.allow.as_ref();
        let offers = routes::offers_avoiding(&status, &avoid, allow);
        let demand = routes::demand_avoiding(&status, &avoid, allow);
        self.node.set_known(known.clone());
        let keyed: BTreeSet<String> = protected.iter().cloned().collect();
        let plan = self.peers.plan(allow, &keyed);
        self.node.set_targets(plan.targets);
        let node = &self.node;
        offer(&mut self.side, &plan.offers, keys, |channel, method| {
            Some(calls_out(
                node.clone(),
                channel.to_owned(),
                method.to_owned(),
            ))
        })
        .await;
        subscribe(&mut self.side, &plan.demand, keys, |_| true).await;
        // Calls from the backbone, and publications it brings, come from a
        // member of the channel.
        let serving = routes::channels(&offers);
        let wanted = routes::channels(&demand);
        let both: BTreeSet<&str> = serving.union(&wanted).copied().collect();
        let joined = self.side.join_all(&both, keys).await;
        let receiving: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|c| joined.contains(*c))
            .collect();
        self.receivers.set(&self.node, &receiving).await;
        let needed: BTreeSet<&str> = [
            serving,
            wanted,
            routes::channels(&plan.offers),
            routes::channels(&plan.demand),
            keyed.iter().map(String::as_str).collect(),
        ]
        .into_iter()
        .flatten()
        .collect();
        self.side.leave_all_but(&needed).await;
        let now = Announce {
            broker: self.node.id.clone(),
            instance: self.instance,
            leaving: false,
            offers: announce::routes(&offers),
            demand: announce::routes(&demand),
            protected,
        };
        if self.announced.as_ref() != Some(&now) {
            publish(&self.node, &now).await?;
            self.announced = Some(now);
        }
        Ok(())
    }

    /// Tell the others this broker leaves, and withdraw what the backbone
    /// did here.
    async fn leave(&mut self) {
        // Calls sent here after the others hear it leave find nobody (and
        // go elsewhere): unsubscribed first, on the same connection.
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        if let Some(mut last) = self.announced.take() {
            last.leaving = true;
            last.offers.clear();
            last.demand.clear();
            if let Err(err) = publish(&self.node, &last).await {
                tracing::debug!(error = %err, "backbone: could not say it leaves");
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.node.nats.flush()).await;
        }
        self.stop.cancel();
        self.receivers = Receivers::default();
        self.side.bus.close();
    }
}

/// Tell the backbone `announce`.
async fn publish(node: &Node, announce: &Announce) -> Result<()> {
    let body = serde_json::to_vec(announce)
        .map_err(|e| Error::Serialization(format!("an announce: {e}")))?;
    let limit = node.max_payload();
    if body.len() > limit {
        return Err(Error::FrameTooLarge {
            size: body.len(),
            limit,
        });
    }
    node.nats
        .publish(node.subjects.announce(), body.into())
        .await
        .map_err(wire::nats_error)
}
