"""Local policies of a node, pure (time is an argument): the one token bucket
(``tokens``), gossip rate limits built on it (``ratelimit``) and the one peer-penalty
policy (``penalties``) that the p2p adapter, sync and blob transfer all apply. Policies
never change which messages are valid, so nodes may differ in them without disagreeing."""
