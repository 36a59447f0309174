"""The camera world: a top-down camera flying over a large ShapeWorld map, every frame with its exact depth,
intrinsics and pose, and an oracle that says which map objects a frame shows and where.

```py
>>> from streamgen.world.camera import sample_map, CameraState, pan, out_and_back, render_flight
>>> world = sample_map(3)
>>> flight = render_flight(world, out_and_back(pan(CameraState(128, 128), 2, 0, 24)))
>>> flight.frames.shape, flight.depth.shape, flight.poses.shape    # (47, 32, 32, 3), (47, 32, 32), (47, 4, 4)
```
"""

from .flight import DEFAULT_HEIGHT, CameraState, camera_to_world, default_intrinsics, out_and_back, pan, turn, zoom
from .map import MapObject, WorldMap, map_seed, sample_map
from .oracle import Detection, ExpectedObject, ViewMatch, match_view, read_view, visible_objects
from .render import Flight, ground_depth, ground_points, render_flight

__all__ = ["MapObject", "WorldMap", "sample_map", "map_seed", "CameraState", "DEFAULT_HEIGHT", "default_intrinsics",
           "camera_to_world", "pan", "zoom", "turn", "out_and_back", "Flight", "render_flight", "ground_points",
           "ground_depth",
           "ExpectedObject", "Detection", "ViewMatch", "visible_objects", "read_view", "match_view"]
