"""The lungs and lesion segmentation network: slices as it sees them (slices.py), its architecture
(network.py), the backbone's maps and the whole network on a runtime (encoder.py), and the radiologists'
lesion data it is trained on (lesion_data.py)."""
