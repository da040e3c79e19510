"""Records, readers and the dataset: everything that reads user data and validates it."""

from xdretrieve.data.dataset import Dataset
from xdretrieve.data.readers import RejectLog, read_interactions, read_items, read_users
from xdretrieve.data.records import Interaction, Item

__all__ = ["Dataset", "Interaction", "Item", "RejectLog", "read_interactions", "read_items",
           "read_users"]
