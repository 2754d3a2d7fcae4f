"""Storage backends behind the one Store protocol (:mod:`runbroker.store.base`)."""
