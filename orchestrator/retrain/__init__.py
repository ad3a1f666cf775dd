"""Winners retrained on Ray Train, checked against their input and registered; the weights a trial hands on
(imports runtime/ and tracking/)."""
