"""The core every pattern plugs into: clock, deadlines, outcomes, events, strategy, pipeline."""
