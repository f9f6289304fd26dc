"""partition: tiles classified by predicted cost, balanced over compute units, as a Plan."""

from .balance import simulate_makespan
from .classify import Classification, bands, classify
from .plan import BucketPlan, Plan
from .planner import DEFAULT_BUCKETS, make_plan

__all__ = ["Plan", "BucketPlan", "make_plan", "classify", "bands", "Classification", "DEFAULT_BUCKETS", "simulate_makespan"]
