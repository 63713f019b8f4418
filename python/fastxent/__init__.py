"""fastxent"""
