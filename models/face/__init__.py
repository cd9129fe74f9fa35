"""Face analysis: detection, 5 keypoints, 68 landmarks, head pose, identity, alignment."""
